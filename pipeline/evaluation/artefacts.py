"""The mouth artefacts an edit can paint: brown or grey blobs at the mouth corners, a smeared band over the lips, a
second mouth. All three are paint, not shading: the skin around the mouth turns darker *and* changes colour. An
expression changes that skin by shading it (a fold, a cheek's shadow: darker, same colour), and changes colour only
inside the lips' opening (teeth, the dark of an open mouth).

So each output is compared with its own source: the source is warped onto the output's landmarks (2d106det on both,
usgan.tps), both are blurred 1.5 px, and in the region around the mouth (the outer lip outline widened by RING of
the crop, below the nose tip, the inner lip's opening left out) the measure counts the pixels whose chromaticity
moved by more than CHROMA while their luminance fell below DARKER of the source's, against the source shifted by
every offset up to SLACK, in patches at least BLOB wide (slivers along the lips' edges are where the two sets of
landmarks disagree by a pixel or two). An output is flagged when that share is above FLAG_SHARE. The unchanged
input scores 0; a pure shading of the same region scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.evaluation.sources import bgr_to_tensor, tensor_to_bgr
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.types import Frame
from usgan.texture import INNER_LIP, OUTER_LIP, polygon_mask
from usgan.tps import warp_crops

CHROMA = 0.03      # L1 distance of (b, g, r) / (b + g + r) between output and aligned source that counts as paint
DARKER = 0.9       # and the output's luminance below this share of the source's
BLOB = 0.025       # painted patches narrower than this (crop units) do not count (a morphological opening)
FLAG_SHARE = 0.02  # an output with more of its mouth region painted than this is flagged
RING = 0.09        # how far beyond the outer lip outline the region reaches, in crop units
OPENING = 0.01     # the inner lip's opening, widened by this (crop units), is left out
NOSE_TIP = 80
BLUR = 1.5         # pixels, on both images, so that a one-pixel misalignment of edges does not count
SLACK = 0.004      # crop units (1 px at 256): a pixel counts only if it is painted against the source shifted by
                   # every offset up to this, so a lip's edge where two faces' landmarks disagree is not paint


def mouth_region(points: NDArray, size: int) -> NDArray[np.bool_]:
    """(size, size) the skin and lips around the mouth of crop-unit landmarks (106, 2), below the nose tip, without
    the inner lip's opening."""
    around = polygon_mask(points, OUTER_LIP, size, dilate=RING * size) > 0.5
    opening = polygon_mask(points, INNER_LIP, size, dilate=OPENING * size) > 0.5
    rows = (np.arange(size) + 0.5)[:, None] / size > points[NOSE_TIP, 1]
    return around & ~opening & rows


def painted(source: Frame, output: Frame) -> NDArray[np.bool_]:
    """Per pixel of two aligned BGR uint8 crops: darker and of another colour in output than in source at every
    offset of the source up to SLACK, in patches at least BLOB wide."""
    a = cv2.GaussianBlur(source.astype(np.float32) + 8.0, (0, 0), BLUR)
    b = cv2.GaussianBlur(output.astype(np.float32) + 8.0, (0, 0), BLUR)
    size = source.shape[0]
    b_chroma, b_luma = b / b.sum(2, keepdims=True), b.mean(2)
    reach = round(SLACK * size)
    paint = np.ones(b_luma.shape, bool)
    for dy, dx in ((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
                   if dy * dy + dx * dx <= reach * reach):
        shifted = cv2.warpAffine(a, np.float32([[1, 0, dx], [0, 1, dy]]), (size, size), borderMode=cv2.BORDER_REPLICATE)
        chroma = np.abs(b_chroma - shifted / shifted.sum(2, keepdims=True)).sum(2)
        paint &= (chroma > CHROMA) & (b_luma < DARKER * shifted.mean(2))
    radius = max(1, round(BLOB * size / 2))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(paint.astype(np.uint8), cv2.MORPH_OPEN, disc).astype(bool)


def artefact_shares(detector: LandmarkDetector, sources: Sequence[Frame], outputs: Sequence[Frame],
                    source_points: NDArray | None = None) -> NDArray[np.float32]:
    """(N,) the share of each output's mouth region painted (sources: the crops they were edited from, one size;
    source_points: their crop-unit landmarks (N, 106, 2) when already read, as one batch edited towards many targets
    has them)."""
    if not outputs:
        return np.zeros(0, np.float32)
    size = outputs[0].shape[0]
    if source_points is None:
        source_points = detector.detect(list(sources)) / np.float32(size)
    output_points = detector.detect(list(outputs)) / np.float32(size)
    aligned = tensor_to_bgr(warp_crops(bgr_to_tensor(sources), torch.from_numpy(source_points),
                                       torch.from_numpy(output_points)))
    shares = []
    for source, output, points in zip(aligned, outputs, output_points):
        region = mouth_region(points, size)
        shares.append(painted(source, output)[region].mean() if region.any() else 0.0)
    return np.array(shares, np.float32)
