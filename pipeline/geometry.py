"""Expression geometry in the processing path: each aligned face's 106 landmarks, the landmarks of its target
expression (usgan.geometry's shape model), and the coarse warp field between them, which the synthesizer applies
in the same batched call as the generator.

Which shape model: synthesizer.geometry (--geometry). "auto" takes the file that the generator weights' header names
under "geometry" (a name beside the weights file) and none when it names none; "off" never warps; anything else is
the file's path.

A schedule's mix of expressions (a cross-fade) warps towards the mix's weighted blend of its targets' landmarks. The
target is linear in the displacement, so a fade moves smoothly from one expression's shape to the next, where the
dominant target alone would jump halfway through. intensity (--intensity times the fade) scales the displacement.

In video, landmarks are smoothed per track with the tracker's One-Euro filter, in crop units, so the warp does not
flicker, and the mouth's opening is speech: kept whole, with none of the target's added (a still gives a smile's
or a gasp's opening up with it). A face whose landmarks fail (not finite, or far outside the crop) or form a shape
the model finds implausible (fit validity below MIN_VALIDITY: a profile, an occlusion) gets a zero field: the
generator alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.faces.detector import DetectorConfig
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.faces.tracking import OneEuroFilter, TrackerConfig
from pipeline.types import AlignedCrop
from usgan.checkpoint import named_geometry as checkpoint_geometry
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.geometry import POINTS, Fit, ShapeModel, fit_expression, target_landmarks
from usgan.texture import TextureModel, fitted_weights
from usgan.tps import FIELD_GRID, coarse_fields

MIN_VALIDITY = 0.01  # below this the fit's target is zero anyway (validity scales it): count the face as failed
CROP_MARGIN = 0.25  # landmarks further outside the crop than this (crop units) are a failed detection
STALE_S = 2.0  # a track's landmark filter is forgotten once it has not been seen for this long


# ---------------------------------------------------------------- the file


def resolve_geometry(setting: str, weights: Path, key: str = "geometry") -> Path | None:
    """The shape model file for synthesizer.geometry: "off" none, "auto" the one the weights name, else a path; key
    "texture": the same for synthesizer.texture."""
    if setting == "off":
        return None
    if setting == "auto":
        return named_geometry(Path(weights), key)
    return Path(setting).expanduser()


def named_geometry(weights: Path, key: str = "geometry") -> Path | None:
    """The file that the weights' header names under key, beside the weights; None when it names none or the
    header is unreadable (the generator's loader then reports the weights file)."""
    try:
        return checkpoint_geometry(weights, key)
    except UserError:
        return None


@dataclass(frozen=True)
class Geometry:
    """What the warp needs, loaded once: the shape model and the 106-landmark net."""

    model: ShapeModel
    landmarks: LandmarkDetector
    texture: TextureModel | None = None  # None: the warp without the texture step


def load_geometry(model: ShapeModel | None, detector: DetectorConfig,
                  texture: TextureModel | None = None) -> Geometry | None:
    """The warp's models for a shape model (None: no warp, and no texture); the landmark net runs where the face
    detector runs."""
    if model is None:
        return None
    return Geometry(model, LandmarkDetector(threads=detector.threads, providers=detector.providers), texture)


@dataclass(frozen=True)
class TextureWeights:
    """Per crop, the texture step's inputs (usgan.texture.TextureLayer): the coarse field (N, 32, 32, 2) from the
    texture's canonical frame to the target landmarks, the ratio and the donor-mouth weights (N, 7); all zero for a
    crop without geometry."""

    fields: NDArray[np.float32]
    ratio: NDArray[np.float32]
    mouth: NDArray[np.float32]

    def rows(self, rows: slice) -> TextureWeights:
        return TextureWeights(self.fields[rows], self.ratio[rows], self.mouth[rows])

    @staticmethod
    def concat(parts: Sequence[TextureWeights]) -> TextureWeights:
        return TextureWeights(*(np.concatenate(arrays) for arrays in zip(*((p.fields, p.ratio, p.mouth)
                                                                           for p in parts))))


@dataclass(frozen=True)
class Warp:
    """A batch's warp: fields (N, 32, 32, 2), which crops' landmarks failed (N,), the texture step's inputs (None
    without a texture model)."""

    fields: NDArray[np.float32]
    failed: NDArray[np.bool_]
    texture: TextureWeights | None = None


# ---------------------------------------------------------------- the fields


def warp_fields(geometry: Geometry, crops: Sequence[AlignedCrop], targets: NDArray, intensity: NDArray,
                times: Sequence[float], smoother: LandmarkSmoother | None = None) -> tuple[NDArray, NDArray]:
    """Per crop, its coarse warp field (N, 32, 32, 2) float32 towards its (7,) target mix at its intensity, and
    whether its landmarks failed (N,) bool (a zero field). times: each crop's frame time, for the smoother, which
    only a video has: its faces keep their whole mouth opening as speech."""
    warp = warp_inputs(geometry, crops, targets, intensity, times, smoother)
    return warp.fields, warp.failed


def warp_inputs(geometry: Geometry, crops: Sequence[AlignedCrop], targets: NDArray, intensity: NDArray,
                times: Sequence[float], smoother: LandmarkSmoother | None = None) -> Warp:
    """warp_fields, with the texture step's inputs when the geometry has a texture model."""
    if not crops:
        empty = np.zeros((0, FIELD_GRID, FIELD_GRID, 2), np.float32)
        texture = None if geometry.texture is None else TextureWeights(empty, *(np.zeros((0, 7), np.float32),) * 2)
        return Warp(empty, np.zeros(0, bool), texture)
    points = crop_landmarks(geometry.landmarks, crops)
    found = landmarks_found(points)
    points = np.where(found[:, None, None], points, geometry.model.mean.reshape(POINTS, 2))  # keeps the fit finite
    if smoother is not None:
        points = smoother.smooth(points, found, [crop.face.track_id for crop in crops], times)
    fit = fit_expression(geometry.model, points)
    failed = ~found | (fit.validity < MIN_VALIDITY)
    fields = np.zeros((len(crops), FIELD_GRID, FIELD_GRID, 2), np.float32)
    texture_fields = fields.copy()
    goal = points
    if (~failed).any():
        goal = blended_targets(geometry.model, points, np.asarray(targets), np.asarray(intensity, float), fit,
                               talking=smoother is not None)
        sources = [points[~failed]] + ([] if geometry.texture is None else
                                       [np.broadcast_to(geometry.texture.canonical, goal[~failed].shape)])
        solved = coarse_fields([torch.from_numpy(np.asarray(s, np.float64)) for s in sources],
                               torch.from_numpy(goal[~failed]))  # one spline system for the warp and the texture
        fields[~failed] = solved[0].numpy()
        texture_fields[~failed] = solved[-1].numpy()
    texture = None
    if geometry.texture is not None:
        texture = texture_weights(geometry.texture, points, goal, fit, np.asarray(targets), np.asarray(intensity),
                                  failed, talking=smoother is not None, fields=texture_fields)
    return Warp(fields, failed, texture)


def texture_weights(texture: TextureModel, points: NDArray, goal: NDArray, fit: Fit, targets: NDArray,
                    intensity: NDArray, failed: NDArray, talking: bool, fields: NDArray) -> TextureWeights:
    """The texture step's inputs for faces whose landmarks are points and whose target landmarks are goal, with their
    canonical -> goal coarse fields (warp_inputs solves them with the warp's). A video face (talking) gets no donor
    mouth: its opening is the speaker's."""
    ratio, mouth = fitted_weights(texture, fit, points, goal, targets, intensity)
    ratio[failed], mouth[failed] = 0.0, 0.0
    if talking:
        mouth[:] = 0.0
    return TextureWeights(fields, ratio, mouth)


def crop_landmarks(detector: LandmarkDetector, crops: Sequence[AlignedCrop]) -> NDArray[np.float64]:
    """(N, 106, 2) landmarks in crop units ([0, 1] of each crop's side), in one batched call of the net."""
    sides = np.array([crop.image.shape[1] for crop in crops], np.float64)
    return detector.detect([crop.image for crop in crops]).astype(np.float64) / sides[:, None, None]


def landmarks_found(points: NDArray) -> NDArray[np.bool_]:
    """(N,) True where the net gave finite landmarks near the crop (a failed one may land anywhere)."""
    inside = (points > -CROP_MARGIN) & (points < 1 + CROP_MARGIN)
    return np.isfinite(points).all((1, 2)) & inside.all((1, 2))


def blended_targets(model: ShapeModel, points: NDArray, targets: NDArray, intensity: NDArray, fit: Fit,
                    talking: bool = False) -> NDArray:
    """(N, 106, 2) target landmarks of faces whose targets are (N, 7) mixes (weights summing to 1): the weighted
    blend of each expression's target_landmarks, which is the blend of their displacements (they are linear).
    talking: video frames (target_landmarks keeps their mouth opening as speech, adding none)."""
    goal = points * (1.0 - targets.sum(1))[:, None, None]  # nothing where a row's weights fall short of 1
    for k in np.flatnonzero(targets.any(0)):
        names = [EXPRESSIONS[k]] * len(points)
        goal += targets[:, k, None, None] * target_landmarks(model, points, names, intensity, fit=fit,
                                                             talking=talking)
    return goal


# ---------------------------------------------------------------- video


class LandmarkSmoother:
    """Per track, a One-Euro filter over its face's 106 landmarks in crop units, with the tracker's settings (crop
    units are about face sizes, the unit its beta is given in). Landmarks that failed are not fed to it."""

    def __init__(self, config: TrackerConfig):
        self.config = config
        self._filters: dict[int, tuple[OneEuroFilter, float]] = {}

    def smooth(self, points: NDArray, found: NDArray, tracks: Sequence[int], times: Sequence[float]) -> NDArray:
        """points (N, 106, 2), smoothed where found and tracked (track id >= 0), in the order given."""
        if not self.config.smooth:
            return points
        smoothed = points.copy()
        for row, (track, time) in enumerate(zip(tracks, times)):
            if track >= 0 and found[row]:
                c = self.config
                smoother = self._filters.get(track, (None,))[0] or OneEuroFilter(c.min_cutoff, c.beta, c.d_cutoff)
                smoothed[row] = smoother(points[row], time)
                self._filters[track] = (smoother, time)
        self.forget(max(times, default=0.0) - STALE_S)
        return smoothed

    def forget(self, before: float) -> None:
        """Drop the filters of tracks last seen before this time."""
        self._filters = {track: entry for track, entry in self._filters.items() if entry[1] >= before}
