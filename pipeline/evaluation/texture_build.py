"""Build the expression texture model (usgan.texture) from prepare-data output.

Pairs: per person and view, each expressive photo with the same person's neutral photo of the closest pose (frontal
views only; held-out people never). Per pair the neutral is warped onto the expressive photo's landmarks and the
ratio of their luminance taken: both blurred (sigma 1.5 px), eps 8 grey levels, exposure normalised by the median
log-ratio over the face, clamped to [0.6, 1.5], the inner mouth (grown) left out. Each pair's ratio is mapped into
the canonical frame and the per-pixel median over pairs taken, faded out where fewer than 70% of pairs are valid.
The donor mouths are the median of the open mouths of the smiling and surprised photos in the same frame.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from pipeline.evaluation.geometry_build import folder_landmarks, view_group
from pipeline.faces.landmarks import LandmarkDetector
from usgan.dataset import DataError, scan_dataset
from usgan.expressions import EXPRESSIONS
from usgan.geometry import (
    CONTOUR, LEFT_BROW, LEFT_EYE, NEUTRAL, NOSE, RIGHT_BROW, RIGHT_EYE, ShapeModel, similarity_to,
)
from usgan.texture import (
    INNER_LIP, LUMA, MOUTH_EXPRESSIONS, SIZE, TextureModel, lip_ring, mouth_opening, polygon_mask, save_texture,
)
from usgan.tps import face_mask, resample, sampling_grid, warp_crops

logger = logging.getLogger(__name__)

EPS = 8.0                       # grey levels added to both luminances
BLUR = 1.5                      # px, at the crops' size
CLAMP = (np.log(0.6), np.log(1.5))
VALID_SHARE = 0.7               # full weight where at least this share of pairs is valid
MIN_DONOR_OPENING = 0.15        # inner over outer lip area: a mouth open enough to donate its inside
# Chosen on training people by scripts/choose_texture_gains.py (the strongest with identity >= .80 per target).
DEFAULT_GAINS = {"angry": 2.5, "disgusted": 1.5, "fearful": 1.5, "happy": 3.0, "sad": 1.5, "surprised": 2.5}


@dataclass(frozen=True)
class Photos:
    """Prepared crops of known people: their paths, landmarks (N, 106, 2) in crop units, labels and groups."""

    paths: list[Path]
    points: NDArray
    labels: NDArray
    groups: list[str]


def frontal_photos(folders: Sequence[Path], hold_out: set[str], detector: LandmarkDetector) -> Photos:
    """Every frontal photo (TFEID view 1, any other set) of a known person who is not held out."""
    paths, points, labels, groups = [], [], [], []
    for folder in folders:
        samples = [s for s in scan_dataset(folder) if s.identity and s.identity not in hold_out]
        samples = [s for s in samples if view_group(s).endswith("/1") or view_group(s).endswith("/")]
        points.append(folder_landmarks(folder, detector).lookup(Path(folder), samples)[0])
        paths += [s.path for s in samples]
        labels += [s.label for s in samples]
        groups += [f"{folder}:{view_group(s)}" for s in samples]
    return Photos(paths, np.concatenate(points).astype(np.float64), np.array(labels), groups)


def closest_pairs(photos: Photos) -> list[tuple[int, int]]:
    """(expressive, neutral) indices: each expressive photo with its group's neutral photo of the closest pose
    (the contour and nose after aligning on the stable points)."""
    pose = list(CONTOUR) + list(NOSE)
    aligned = similarity_to(photos.points, photos.points[photos.labels == NEUTRAL].mean(0))[0][:, pose]
    pairs = []
    for group in sorted(set(photos.groups)):
        rows = np.flatnonzero(np.array(photos.groups) == group)
        neutral = rows[photos.labels[rows] == NEUTRAL]
        for row in rows[photos.labels[rows] != NEUTRAL] if len(neutral) else []:
            distance = ((aligned[neutral] - aligned[row]) ** 2).sum((1, 2))
            pairs.append((int(row), int(neutral[np.argmin(distance)])))
    return pairs


def read_crops(paths: Sequence[Path]) -> torch.Tensor:
    """(N, 3, S, S) float32 RGB in [0, 1]."""
    images = [cv2.imread(str(p)) for p in paths]
    unreadable = [p for p, image in zip(paths, images) if image is None]
    if unreadable:
        raise DataError(f"{unreadable[0]}: not a readable image")
    return torch.from_numpy(np.stack([i[..., ::-1] for i in images]).astype(np.float32) / 255).permute(0, 3, 1, 2)


def eye_masks(points: NDArray, size: int) -> NDArray[np.float32]:
    """Both eyes' openings, grown by 2% of the crop: what shows there (sclera, iris) is the eye itself, not
    shading, and a ratio of it paints glowing eyes on another face."""
    hulls = [cv2.convexHull(points[list(eye)].astype(np.float32)).reshape(-1, 2) for eye in (LEFT_EYE, RIGHT_EYE)]
    return np.maximum(*(polygon_mask(hull, tuple(range(len(hull))), size, dilate=size / 50) for hull in hulls))


def blurred_luminance(images: torch.Tensor, sigma: float = BLUR) -> torch.Tensor:
    """(N, 1, S, S) luminance in grey levels, Gaussian-blurred."""
    luma = (images * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True) * 255
    radius = int(np.ceil(3 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    luma = F.conv2d(F.pad(luma, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(luma, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))


def pair_ratios(expressive: torch.Tensor, neutral: torch.Tensor, expressive_points: NDArray,
                neutral_points: NDArray, canonical: NDArray) -> tuple[NDArray, NDArray]:
    """Per pair, the log luminance ratio in the canonical frame (P, SIZE, SIZE) and where it is valid (bool)."""
    size = expressive.shape[-1]
    e_points, n_points = (torch.from_numpy(p).float() for p in (expressive_points, neutral_points))
    warped = warp_crops(neutral, n_points, e_points)
    ratio = torch.log((blurred_luminance(expressive) + EPS) / (blurred_luminance(warped) + EPS))
    mouth = np.stack([polygon_mask(p, INNER_LIP, size, dilate=size / 48) + eye_masks(p, size)
                      for p in expressive_points])
    valid = (face_mask(size)[None] > 0.5) & (torch.from_numpy(mouth) < 0.01)
    for row in range(len(ratio)):
        ratio[row] -= ratio[row, 0][valid[row]].median()
    ratio = ratio.clamp(*CLAMP)
    goal = torch.from_numpy(np.broadcast_to(canonical, expressive_points.shape).copy()).float()
    stacked = torch.cat([ratio, valid[:, None].float()], 1)
    mapped = resample(stacked, sampling_grid(e_points, goal, SIZE))
    return mapped[:, 0].numpy(), (mapped[:, 1] > 0.99).numpy()


def face_region(canonical: NDArray) -> NDArray[np.float32]:
    """(SIZE, SIZE) the skin an expression shades, in the canonical frame: the jaw line and the brows raised to
    the forehead, shrunk by 3 px and feathered, so hair, ears and background (which differ between two photos
    for reasons other than the expression) never enter the ratio."""
    brows = canonical[list(LEFT_BROW + RIGHT_BROW)] - np.array([0.0, 0.08])
    outline = np.concatenate([canonical[list(CONTOUR)], brows])
    hull = cv2.convexHull(outline.astype(np.float32)).reshape(-1, 2)
    mask = polygon_mask(hull, tuple(range(len(hull))), SIZE)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    return cv2.GaussianBlur(mask, (0, 0), 3.0)


def median_ratio(ratios: NDArray, valid: NDArray, region: NDArray) -> NDArray:
    """The per-pixel median of the valid ratios within the face region, faded out where fewer than VALID_SHARE
    of them are valid."""
    share = valid.mean(0)
    with warnings.catch_warnings():  # pixels no pair covers are all-NaN: they get weight 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.where(valid, ratios, np.nan), 0)
    weight = np.clip((share - 0.5) / (VALID_SHARE - 0.5), 0.0, 1.0) * region
    return cv2.GaussianBlur(np.nan_to_num(median) * weight, (0, 0), 1.0).astype(np.float32)


def donor_mouth(images: torch.Tensor, points: NDArray, canonical: NDArray) -> NDArray:
    """(3, SIZE, SIZE) the per-pixel median of the donors' crops mapped into the canonical frame."""
    goal = torch.from_numpy(np.broadcast_to(canonical, points.shape).copy()).float()
    mapped = resample(images, sampling_grid(torch.from_numpy(points).float(), goal, SIZE))
    return np.median(mapped.numpy(), 0).astype(np.float32)


def build_texture(model: ShapeModel, folders: Sequence[Path], hold_out: Sequence[str],
                  detector: LandmarkDetector | None = None, batch: int = 48) -> TextureModel:
    """The texture model of every frontal expressive photo of a known person in folders, except the held-out."""
    photos = frontal_photos(folders, set(hold_out), detector or LandmarkDetector())
    pairs = closest_pairs(photos) if NEUTRAL in photos.labels else []
    if not pairs:
        raise DataError(f"{folders[0]}: no person has both a neutral and an expressive frontal photo")
    canonical = (model.mean + model.displacements[EXPRESSIONS.index("surprised")]).reshape(-1, 2)
    log_ratio = np.zeros((len(EXPRESSIONS), SIZE, SIZE), np.float32)
    mouth = np.zeros((len(EXPRESSIONS), 3, SIZE, SIZE), np.float32)
    alpha = np.zeros((len(EXPRESSIONS), SIZE, SIZE), np.float32)
    counts = {}
    for k, name in enumerate(EXPRESSIONS):
        chosen = [(e, n) for e, n in pairs if photos.labels[e] == k]
        if not chosen:
            continue
        ratios, valid = [], []
        for start in range(0, len(chosen), batch):
            e, n = (np.array(side) for side in zip(*chosen[start:start + batch]))
            r, v = pair_ratios(read_crops([photos.paths[i] for i in e]), read_crops([photos.paths[i] for i in n]),
                               photos.points[e], photos.points[n], canonical)
            ratios.append(r)
            valid.append(v)
        log_ratio[k] = median_ratio(np.concatenate(ratios), np.concatenate(valid), face_region(canonical))
        donors = [e for e, _ in chosen if mouth_opening(photos.points[e:e + 1])[0] > MIN_DONOR_OPENING]
        if name in MOUTH_EXPRESSIONS and donors:
            mouth[k] = donor_mouth(read_crops([photos.paths[i] for i in donors]), photos.points[donors], canonical)
            alpha[k] = polygon_mask(canonical, INNER_LIP, SIZE, feather=1.0)
        counts[name] = {"pairs": len(chosen), "mouth_donors": len(donors) if name in MOUTH_EXPRESSIONS else 0}
        logger.info("texture %s: %d pairs", name, len(chosen))
    ring = lip_ring(canonical)
    ring_colour = (mouth * ring[None, None]).sum((2, 3)) / max(float(ring.sum()), 1e-6)
    sources = {"folders": [Path(f).name for f in folders], "pairs": counts, "held_out": sorted(set(hold_out)),
               "people": len({g.split(":")[-1].split("/")[0] for g in photos.groups})}
    return TextureModel(canonical.astype(np.float32), log_ratio, mouth, alpha, ring, ring_colour.astype(np.float32),
                        gains=dict(DEFAULT_GAINS), sources=sources)


def write_texture(model: ShapeModel, folders: Sequence[Path], hold_out: Sequence[str], out: Path) -> TextureModel:
    """build_texture, saved atomically to out."""
    texture = build_texture(model, folders, hold_out)
    save_texture(out, texture)
    return texture
