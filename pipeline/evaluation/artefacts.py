"""The mouth artefacts an edit can paint, measured on the edited crop itself: dark patches at the mouth corners, a
dark band over the lips, a second mouth. All three are dark paint on skin that should be lit like the cheeks, so
the measure reads the output's own 106 landmarks (2d106det) and counts, in the skin ring around the lips (outside
the outer lip outline, below the nose), the pixels much darker than the face's own cheeks. An output is flagged when
that share is above FLAG_SHARE; evaluate reports each condition's flagged rate beside the unchanged inputs'.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.faces.landmarks import LandmarkDetector
from pipeline.types import Frame
from usgan.texture import OUTER_LIP, polygon_mask

DARK = 0.72        # darker than this share of the cheeks' median luminance counts as dark paint
FLAG_SHARE = 0.08  # an output with more of its lip ring dark than this is flagged
RING = (0.025, 0.09)  # the skin ring around the outer lip outline, inner and outer distance in crop units
NOSE_TIP = 80
CHEEKS = ((12, 76), (28, 82))  # jaw-line and nose points whose midpoints sit on each cheek


def lip_ring_region(points: NDArray, size: int) -> NDArray[np.bool_]:
    """(size, size) the skin ring around the outer lips of crop-unit landmarks (106, 2), below the nose tip."""
    inner = polygon_mask(points, OUTER_LIP, size, dilate=RING[0] * size) > 0.5
    outer = polygon_mask(points, OUTER_LIP, size, dilate=RING[1] * size) > 0.5
    rows = (np.arange(size) + 0.5)[:, None] / size > points[NOSE_TIP, 1]
    return outer & ~inner & rows


def cheek_luminance(luma: NDArray, points: NDArray) -> float:
    """The median luminance of two small patches, one on each cheek."""
    size, values = luma.shape[0], []
    for a, b in CHEEKS:
        x, y = ((points[a] + points[b]) / 2 * size).astype(int)
        r = max(2, size // 40)
        values.append(luma[max(y - r, 0):y + r, max(x - r, 0):x + r].ravel())
    return float(np.median(np.concatenate(values)))


def dark_share(image: Frame, points: NDArray) -> float:
    """Share of the lip ring's pixels darker than DARK x the cheeks (BGR uint8 crop, its crop-unit landmarks)."""
    luma = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    region = lip_ring_region(points, image.shape[0])
    if not region.any():
        return 0.0
    return float((luma[region] < DARK * cheek_luminance(luma, points)).mean())


def artefact_shares(detector: LandmarkDetector, images: Sequence[Frame]) -> NDArray[np.float32]:
    """(N,) dark_share of each square crop, on its own landmarks (one batched call of the net)."""
    if not images:
        return np.zeros(0, np.float32)
    points = detector.detect(list(images)) / np.float32(images[0].shape[0])
    return np.array([dark_share(image, p) for image, p in zip(images, points)], np.float32)
