"""evaluate-video: what `process` does to video clips over time, measured against each clip's input.

Each clip goes through the product's own video workflow (pipeline.process.process_video, in this process); then
input and output are decoded side by side and the input's faces tracked as process tracks them. Per clip:

- flicker: the mean absolute frame-to-frame change (grey levels, the three channels averaged) inside the face
  crops, weighted by the blend mask of each tracked face's aligned crop mapped into the frame (where process may
  change pixels; the union over faces, taken at the later frame of each pair), for the output and for the input;
  their ratio (1: the edit adds no flicker of its own);
- mouth: per frame, the inner-lip opening of the largest tracked face in the output and in the input (2d106det on
  the face's aligned crop, the same crop cut from both frames: the mean distance of the three upper/lower inner-lip
  landmark pairs, in crop widths) and their Pearson correlation over the frames with a face (speech kept: near 1).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.config import ProcessConfig, parse_edit
from pipeline.edit import load_models
from pipeline.evaluation.flicker import Flicker, FlickerMeter
from pipeline.evaluation.report import write_report
from pipeline.evaluation.sources import EvaluateError
from pipeline.faces.align import align_face, estimate_affine, select_faces
from pipeline.faces.detector import FaceDetector
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.faces.tracking import TrackerConfig, track_faces
from pipeline.process import ProcessResult, decode_stage, default_output, input_kind, process_video
from pipeline.types import Face, Frame, Mask
from pipeline.video.probe import probe_video
from usgan.files import output_folder

log = logging.getLogger(__name__)

INNER_LIP_PAIRS = ((66, 54), (62, 60), (70, 57))  # 2d106det (upper, lower) inner-lip points: left, middle, right


@dataclass(frozen=True)
class ClipSettings:
    """How process framed the faces: its tracker, aligned crop size and blend mask (crop_size x crop_size)."""

    tracker: TrackerConfig
    crop_size: int
    mask: Mask


@dataclass(frozen=True)
class ClipMeasures:
    """A clip's flicker, and per frame the mouth opening (crop widths; NaN without a face) of input and output."""

    flicker: Flicker
    mouth_input: NDArray[np.float64]
    mouth_output: NDArray[np.float64]

    @property
    def mouth_correlation(self) -> float | None:
        return pearson(self.mouth_input, self.mouth_output)


def mouth_opening(points: NDArray) -> NDArray[np.float64]:
    """(N,) mean distance of the inner-lip pairs of (N, 106, 2) landmarks, in the landmarks' units."""
    upper, lower = (list(side) for side in zip(*INNER_LIP_PAIRS))
    return np.linalg.norm(points[:, upper] - points[:, lower], axis=2).mean(1).astype(np.float64)


def pearson(a: NDArray, b: NDArray) -> float | None:
    """Pearson correlation over the entries where both are finite; None with fewer than 3 or no variation."""
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return None
    x, y = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    if scale <= 1e-12:
        return None
    return float(np.clip((x * y).sum() / scale, -1.0, 1.0))


def crop_masks(shape: tuple[int, ...], faces: Sequence[Face], settings: ClipSettings) -> Mask:
    """(H, W) union of the faces' blend masks, each mapped from its aligned crop into the frame."""
    union = np.zeros(shape[:2], np.float32)
    for face in faces:
        to_frame = cv2.invertAffineTransform(estimate_affine(face.landmarks, settings.crop_size))
        mapped = cv2.warpAffine(settings.mask, to_frame, (shape[1], shape[0]), flags=cv2.INTER_LINEAR)
        np.maximum(union, mapped, out=union)
    return union


class MouthMeter:
    """Mouth openings of the largest face, input and output, per frame; landmarks run in batches of frames."""

    def __init__(self, detector: LandmarkDetector, crop_size: int, batch: int = 16):
        self.detector, self.crop_size, self.batch = detector, crop_size, batch
        self._openings: list[list[float]] = []
        self._pending: list[tuple[int, Frame, Frame]] = []

    def add(self, frame_in: Frame, frame_out: Frame, faces: Sequence[Face]) -> None:
        self._openings.append([np.nan, np.nan])
        if faces:
            face = select_faces(faces, "largest")[0]
            crops = (align_face(frame, face, self.crop_size).image for frame in (frame_in, frame_out))
            self._pending.append((len(self._openings) - 1, *crops))
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            points = self.detector.detect([crop for _, *pair in self._pending for crop in pair]) / self.crop_size
            for (index, _, _), pair in zip(self._pending, mouth_opening(points).reshape(-1, 2)):
                self._openings[index] = list(pair)
        self._pending = []

    def result(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(input openings, output openings), one per frame."""
        self._flush()
        openings = np.array(self._openings, np.float64).reshape(-1, 2)
        return openings[:, 0], openings[:, 1]


def paired_frames(video_in: Path, video_out: Path, detector: FaceDetector,
                  tracker: TrackerConfig) -> Iterator[tuple[Frame, Frame, list[Face]]]:
    """Upright frames of a video and its processed output, with the faces tracked in the input."""
    rotation = probe_video(video_in).rotation
    tracked = track_faces(decode_stage(video_in, rotation), detector, tracker)
    for pair, frame_out in itertools.zip_longest(tracked, decode_stage(video_out, rotation)):
        if pair is None or frame_out is None:
            raise EvaluateError(f"{video_out}: frame count differs from its input {video_in}")
        yield pair[0].image, frame_out.image, pair[1]


def measure_clip(video_in: Path, video_out: Path, detector: FaceDetector, landmarks: LandmarkDetector,
                 settings: ClipSettings) -> ClipMeasures:
    """Flicker and mouth openings of a processed video against its input (see the module's docstring)."""
    flicker, mouths = FlickerMeter(), MouthMeter(landmarks, settings.crop_size)
    for frame_in, frame_out, faces in paired_frames(video_in, video_out, detector, settings.tracker):
        if frame_in.shape != frame_out.shape:
            raise EvaluateError(f"{video_out}: frame size {frame_out.shape[1]}x{frame_out.shape[0]} differs from "
                                f"its input's {frame_in.shape[1]}x{frame_in.shape[0]} ({video_in})")
        flicker.add(frame_in, frame_out, crop_masks(frame_in.shape, faces, settings))
        mouths.add(frame_in, frame_out, faces)
    return ClipMeasures(flicker.result(), *mouths.result())


def clip_summary(clip: Path, result: ProcessResult, measures: ClipMeasures) -> dict[str, Any]:
    """One clip's numbers for metrics.json."""
    flicker, with_face = measures.flicker, np.isfinite(measures.mouth_input)
    return {"clip": str(clip), "output": str(result.output), "frames": result.frames,
            "faces_found": result.faces_found, "faces_edited": result.faces_edited, "seconds": result.seconds,
            "flicker": {"input": flicker.input, "output": flicker.output, "ratio": flicker.ratio},
            "mouth": {"correlation": measures.mouth_correlation, "frames": int(with_face.sum()),
                      "input_mean": float(measures.mouth_input[with_face].mean()) if with_face.any() else None,
                      "output_mean": float(measures.mouth_output[with_face].mean()) if with_face.any() else None}}


def evaluate_clips(clips: Sequence[Path], out: Path, config: ProcessConfig) -> dict[str, Any]:
    """Process every clip into OUT/clips/ with config, measure it against its input and write OUT/metrics.json and
    OUT/report.md; returns the metrics."""
    for clip in clips:
        if input_kind(Path(clip)) != "video":
            raise EvaluateError(f"{clip}: not a video clip")
    edit = parse_edit(config)
    models = load_models(config, edit)
    settings = ClipSettings(config.tracker, config.crop_size, models.mask)
    landmarks = LandmarkDetector()
    rows = []
    with output_folder(out / "clips"):  # a failure leaves no empty folder behind
        for clip in clips:
            result = process_video(clip, out / "clips" / default_output(Path(clip), edit.schedule).name, config,
                                   models)
            rows.append(clip_summary(clip, result, measure_clip(clip, result.output, models.finder.detector,
                                                                landmarks, settings)))
            log.info("%s: flicker ratio %s, mouth correlation %s", clip, rows[-1]["flicker"]["ratio"],
                     rows[-1]["mouth"]["correlation"])
    process = {"expression": config.expression, "intensity": config.intensity, "weights": str(edit.weights),
               "crop_size": config.crop_size, "blend": config.blend, "detect_every": config.tracker.detect_every}
    metrics = {"process": process, "clips": rows}
    write_report(out, metrics)
    return metrics

