"""What the workflows share: the models, loaded once, and the per-frame steps between the stages.

A frame's faces are planned (selected, aligned, and given the schedule's target at the frame's time), given their
warp fields when expression geometry is on (pipeline.geometry), their crops go through the generator in batches
across frames, and the edits are blended back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from pipeline.blend import FaceEdit, blend_faces, build_face_mask
from pipeline.config import Edit, ProcessConfig, parse_edit, share_threads
from pipeline.faces.align import align_face, select_faces
from pipeline.faces.detector import FaceFinder
from pipeline.geometry import Geometry, LandmarkSmoother, TextureWeights, load_geometry, warp_inputs
from pipeline.schedule import Mix, Schedule
from pipeline.synthesize import FaceSynthesizer, build_synthesizer
from pipeline.types import AlignedCrop, Face, Frame, Mask, VideoFrame
from usgan.expressions import EXPRESSIONS

EXPRESSION_INDEX = {name: index for index, name in enumerate(EXPRESSIONS)}


@dataclass(frozen=True)
class Models:
    """Everything loaded once and reused across frames and files."""

    finder: FaceFinder
    synthesizer: FaceSynthesizer | None  # None: a worker that only finds and blends faces (the generator runs apart)
    schedule: Schedule
    mask: Mask
    geometry: Geometry | None = None  # None: no warp


def load_models(config: ProcessConfig, edit: Edit | None = None, generator: bool = True) -> Models:
    """Detector, generator and geometry for config; edit: the schedule, weights and shape model parsed already (None:
    parsed here, so that their errors come before the slow loads). generator False: no generator (a worker whose
    faces go to a generator elsewhere)."""
    edit = edit or parse_edit(config)
    config = share_threads(config, os.cpu_count() or 1)
    geometry = load_geometry(edit.geometry, config.detector, edit.texture)
    synthesizer = build_synthesizer(config.synthesizer, edit.weights, warp=geometry is not None,
                                    texture=geometry.texture if geometry else None) if generator else None
    finder = FaceFinder(config.detector, config.image_pad)
    return Models(finder, synthesizer, edit.schedule, build_face_mask(config.crop_size), geometry)


@dataclass(frozen=True)
class FaceJob:
    """One frame's aligned faces and the target they are edited towards (target (7,) weights, intensity); with
    geometry on, their warp fields (crops, 32, 32, 2), how many of them got none (failed landmarks), and with a
    texture model the texture step's inputs."""

    frame: VideoFrame
    crops: tuple[AlignedCrop, ...]
    target: NDArray[np.float32]
    intensity: float
    faces_found: int
    fields: NDArray[np.float32] | None = None
    without_geometry: int = 0
    texture: TextureWeights | None = None


@dataclass(frozen=True)
class EditedFrame:
    """A frame and its faces' generator round trips, ready to blend."""

    frame: VideoFrame
    edits: tuple[FaceEdit, ...]


def mix_target(mix: Mix, intensity: float) -> tuple[NDArray[np.float32], float]:
    """(7,) target weights summing to 1 and the residual scale for a schedule mix (empty mix: scale 0)."""
    vector = np.zeros(len(EXPRESSIONS), np.float32)
    total = sum(weight for _, weight in mix)
    for name, weight in mix:  # canonical names, parsed once with the schedule: a lookup, not a parse, per frame
        vector[EXPRESSION_INDEX[name]] = weight / total
    return vector, float(min(1.0, total) * intensity)


def plan_faces(frame: VideoFrame, faces: Sequence[Face], mix: Mix, config: ProcessConfig) -> FaceJob:
    """Select and align a frame's faces for its scheduled target; none when nothing is scheduled."""
    target, intensity = mix_target(mix, config.intensity)
    chosen = select_faces(faces, config.faces) if intensity > 0 else []
    crops = tuple(align_face(frame.image, face, config.crop_size) for face in chosen)
    return FaceJob(frame, crops, target, intensity, len(faces))


def job_targets(jobs: Sequence[FaceJob]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Every crop's (N, 7) target weights and (N,) intensity, in order."""
    targets = np.array([job.target for job in jobs for _ in job.crops], np.float32).reshape(-1, len(EXPRESSIONS))
    return targets, np.array([job.intensity for job in jobs for _ in job.crops], np.float32)


def warp_jobs(jobs: Sequence[FaceJob], geometry: Geometry | None,
              smoother: LandmarkSmoother | None = None) -> list[FaceJob]:
    """The jobs with their crops' warp fields (the landmark net batched across them); as they are without geometry.
    smoother: a video's, which smooths each track's landmarks across calls."""
    if geometry is None:
        return list(jobs)
    crops = [crop for job in jobs for crop in job.crops]
    times = [job.frame.time for job in jobs for _ in job.crops]
    warp = warp_inputs(geometry, crops, *job_targets(jobs), times, smoother)
    ends = np.cumsum([len(job.crops) for job in jobs], dtype=int)
    rows = [slice(end - len(job.crops), end) for job, end in zip(jobs, ends)]
    return [replace(job, fields=warp.fields[row], without_geometry=int(warp.failed[row].sum()),
                    texture=None if warp.texture is None else warp.texture.rows(row)) for job, row in zip(jobs, rows)]


def synthesize_jobs(jobs: Sequence[FaceJob], synthesizer: FaceSynthesizer, batch_size: int) -> list[EditedFrame]:
    """Run every crop of several frames through the generator (warped where the jobs have fields) in batches of
    batch_size; results per frame."""
    crops = [crop for job in jobs for crop in job.crops]
    targets, scales = job_targets(jobs)
    warped = bool(jobs) and all(job.fields is not None for job in jobs)
    fields = np.concatenate([job.fields for job in jobs]) if warped else None
    textured = warped and all(job.texture is not None for job in jobs)
    texture = TextureWeights.concat([job.texture for job in jobs]) if textured else None
    generated: list[Frame] = []
    for start in range(0, len(crops), batch_size):
        rows = slice(start, start + batch_size)
        batch = np.stack([crop.image for crop in crops[rows]])
        generated.extend(synthesizer.synthesize(batch, targets[rows], scales[rows],
                                                fields=None if fields is None else fields[rows],
                                                texture=None if texture is None else texture.rows(rows)))
    edits = iter(FaceEdit(crop.image, image, crop.affine) for crop, image in zip(crops, generated))
    return [EditedFrame(job.frame, tuple(next(edits) for _ in job.crops)) for job in jobs]


def blend_frame(edited: EditedFrame, mask: Mask, config: ProcessConfig) -> Frame:
    """The frame with its edits pasted back (the frame itself when there are none)."""
    if not edited.edits:
        return edited.frame.image
    return blend_faces(edited.frame.image, edited.edits, mask, config.blend, config.clone_scale)


def still_frame(index: int, image: Frame) -> VideoFrame:
    """A still image as a frame at time 0 (a photo is one moment: the schedule is read at 0 s)."""
    return VideoFrame(index, image, None, Fraction(1), 0.0)


def still_mix(models: Models) -> Mix:
    """The schedule's mix at 0 s, the only moment of a still image."""
    return models.schedule.mix_at(0.0)


def plan_still(index: int, image: Frame, models: Models, config: ProcessConfig) -> FaceJob:
    """A still image's faces found (padded retry for tight crops), aligned and given their warp fields."""
    job = plan_faces(still_frame(index, image), models.finder.image_faces(image), still_mix(models), config)
    return warp_jobs([job], models.geometry)[0]


def stills_are_edited(models: Models, config: ProcessConfig) -> bool:
    """False when the schedule (with config.intensity) changes nothing at 0 s, so every still stays as it is."""
    return mix_target(still_mix(models), config.intensity)[1] > 0
