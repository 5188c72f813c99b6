"""Build the expression geometry model (usgan.geometry) from prepare-data output.

Each folder's crops get their 106 landmarks once, cached in FOLDER/landmarks.npz (in crop units, of each crop and
of its mirror image, which training needs for flipped photos). The model is then fitted on every photo of a known
person, except the people held out for evaluation, and checked on those people's expression pairs (pair_error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.faces.landmarks import LandmarkDetector
from usgan.dataset import DataError, FolderLandmarks, Sample, read_landmarks, scan_dataset, write_landmarks
from usgan.expressions import EXPRESSIONS
from usgan.geometry import (
    LEFT_EYE, NEUTRAL, POINTS, RIGHT_EYE, FitSettings, ShapeModel, build_model, save_model, similarity_to,
    target_landmarks,
)

logger = logging.getLogger(__name__)

# The fit's settings stored in a built model: noise 8 gave the best leave-performers-out naming of the source's
# expression on TFEID's training people; the confidence thresholds are the 95th and 1.5 x the 99.5th percentile
# of the fit distance on training photos. The inner brows: angry's lowered 1.5x as far, sad's raised (the photos'
# mean lowers them), chosen on training people by scripts/choose_texture_gains.py (docs/TRAINING_NOTES.md).
BUILT_SETTINGS = FitSettings(noise=8.0, spread=0.25, neutral_prior=1.0, bound=1.5, conf_low=0.47, conf_high=1.0,
                             inner_brows={"angry": 1.5, "sad": -1.5})

# The landmarks an expression moves: mouth, brows and eyes (pair_error compares these).
EXPRESSIVE_POINTS = tuple(range(52, 72)) + tuple(range(43, 52)) + tuple(range(97, 106)) + LEFT_EYE + RIGHT_EYE


@dataclass(frozen=True)
class PairError:
    """How far the model's target shapes fall from real photos of the same people showing the targets: RMS over the
    mouth, brow and eye landmarks, in eye distances (centre to centre), after aligning both shapes on the stable
    points; and the same for the sources left unchanged, for scale."""

    pairs: int
    predicted: float
    unchanged: float


def pair_error(model: ShapeModel, points: NDArray, labels: NDArray, groups: list[str]) -> PairError:
    """Every ordered pair of one group's photos (one person, one view) with different expressions: the first's
    target_landmarks towards the second's expression (the data's mean displacement, without the settings' scales
    and inner brows) against the second's landmarks."""
    rows: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        rows.setdefault(group, []).append(index)
    pairs = [(a, b) for members in rows.values() for a in members for b in members if labels[a] != labels[b]]
    if not pairs:
        return PairError(0, float("nan"), float("nan"))
    source, target = (np.array(side) for side in zip(*pairs))
    as_measured = replace(model.settings, scales={}, inner_brows={})
    predicted = target_landmarks(model, points[source], [EXPRESSIONS[k] for k in labels[target]], settings=as_measured)
    reference = model.mean.reshape(POINTS, 2)
    real = similarity_to(points[target], reference)[0][:, list(EXPRESSIVE_POINTS)]
    eyes = np.linalg.norm(reference[list(LEFT_EYE)].mean(0) - reference[list(RIGHT_EYE)].mean(0))

    def rms(shapes: NDArray) -> float:
        aligned = similarity_to(shapes, reference)[0][:, list(EXPRESSIVE_POINTS)]
        return float(np.sqrt(((aligned - real) ** 2).sum(2).mean(1)).mean() / eyes)

    return PairError(len(pairs), rms(predicted), rms(points[source]))


def detect_crops(detector: LandmarkDetector, paths: Sequence[Path], batch: int = 64) -> tuple[NDArray, NDArray]:
    """(N, 106, 2) crop-unit landmarks of each crop and of its mirror image."""
    points, mirrored = [], []
    for start in range(0, len(paths), batch):
        crops = [cv2.imread(str(p)) for p in paths[start:start + batch]]
        unreadable = [p for p, c in zip(paths[start:start + batch], crops) if c is None]
        if unreadable:
            raise DataError(f"{unreadable[0]}: not a readable image")
        size = np.array([c.shape[1] for c in crops], np.float32)[:, None, None]
        points.append(detector.detect(crops) / size)
        mirrored.append(detector.detect([c[:, ::-1].copy() for c in crops]) / size)
    return np.concatenate(points).astype(np.float32), np.concatenate(mirrored).astype(np.float32)


def folder_landmarks(folder: Path, detector: LandmarkDetector) -> FolderLandmarks:
    """The landmarks of every crop indexed in folder, detecting only those not cached yet; the cache is rewritten
    atomically when anything was added."""
    folder = Path(folder)
    names = [s.path.relative_to(Path(folder).resolve()).as_posix() for s in scan_dataset(folder)]
    try:
        cached = read_landmarks(folder)
    except DataError:
        cached = FolderLandmarks((), np.zeros((0, 106, 2), np.float32), np.zeros((0, 106, 2), np.float32))
    known = {name: i for i, name in enumerate(cached.paths)}
    todo = [n for n in names if n not in known]
    if not todo:
        return cached
    logger.info("%s: landmarks of %d crops", folder, len(todo))
    points, mirrored = detect_crops(detector, [folder / n for n in todo])
    result = FolderLandmarks(cached.paths + tuple(todo), np.concatenate([cached.points, points]),
                             np.concatenate([cached.mirrored, mirrored]))
    write_landmarks(folder, result)
    return result


def view_group(sample: Sample) -> str:
    """Expression pairs are taken within one person and one view point (a TFEID file name's 4th character)."""
    stem = sample.path.stem
    view = stem[3] if len(stem) == 7 and stem.isalnum() else ""
    return f"{sample.identity}/{view}"


def people_shapes(folders: Sequence[Path], wanted: Callable[[str], bool],
                  detector: LandmarkDetector) -> tuple[NDArray, NDArray, list[str]]:
    """Landmarks (N, 106, 2), expression labels and person/view groups of every photo of a known person whom
    wanted accepts, in folders."""
    points, labels, groups = [], [], []
    for folder in folders:
        samples = [s for s in scan_dataset(folder) if s.identity and wanted(s.identity)]
        points.append(folder_landmarks(folder, detector).lookup(Path(folder), samples)[0])
        labels += [s.label for s in samples]
        groups += [f"{folder}:{view_group(s)}" for s in samples]
    return np.concatenate(points).astype(np.float64), np.array(labels, np.int64), groups


def build_geometry(folders: Sequence[Path], hold_out: Sequence[str], settings: FitSettings = BUILT_SETTINGS,
                   detector: LandmarkDetector | None = None) -> ShapeModel:
    """The shape model of every photo of a known person in folders, except the held-out people."""
    detector = detector or LandmarkDetector()
    held = set(hold_out)
    points, labels, groups = people_shapes(folders, lambda person: person not in held, detector)
    if not len(labels) or NEUTRAL not in labels:
        raise DataError(f"{folders[0]}: no neutral photos of known people to build the shape model from")
    sources = {"folders": [Path(f).name for f in folders], "photos": len(labels),
               "people": len({g.split(":")[-1].split("/")[0] for g in groups}), "held_out": sorted(held)}
    try:
        model = build_model(points, labels, groups, sources=sources)
    except ValueError as error:
        raise DataError(f"{folders[0]}: {error}") from error
    return replace(model, settings=settings)


def held_out_error(model: ShapeModel, folders: Sequence[Path], hold_out: Sequence[str],
                   detector: LandmarkDetector | None = None) -> PairError:
    """pair_error on the held-out people's photos (no pairs when none of them is in folders)."""
    held = set(hold_out)
    points, labels, groups = people_shapes(folders, lambda person: person in held, detector or LandmarkDetector())
    return pair_error(model, points, labels, groups)


def write_geometry(folders: Sequence[Path], hold_out: Sequence[str], out: Path,
                   settings: FitSettings = BUILT_SETTINGS) -> tuple[ShapeModel, PairError]:
    """build_geometry, saved atomically to out; and its error on the held-out people's expression pairs."""
    detector = LandmarkDetector()
    model = build_geometry(folders, hold_out, settings, detector)
    save_model(out, model)
    return model, held_out_error(model, folders, hold_out, detector)
