"""The blend stage: paste a generated face crop back into its frame, with a feathered or a Poisson (seamless) edge.

Identity-exactness: when the caller passes the crop the generator received (`original`), only the generator's
*change* (generated - original, in crop pixels) is warped back and added to the untouched frame pixels. A zero change
is then bit-exact identity in feather mode (and within OpenCV's 1-level rounding in seamless mode), and the face keeps
the frame's full-resolution detail even when the crop is smaller than the face. Warping the generated crop itself
(original=None) resamples the face twice and blurs it; that path exists for generators without a source crop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.faces import crop_template
from pipeline.types import BLEND_MODES, Affine, BlendMode, Frame, Mask

logger = logging.getLogger(__name__)

_WARP_MARGIN = 2  # frame pixels around the warped mask's support, so bilinear taps never fall off the region
_CLONE_PAD = 5  # > 1 px ring OpenCV zeroes + 3 px it erodes, so the mask reaches the frame border unweakened


class FaceEdit(NamedTuple):
    """One face's generator round trip: the crop it received, the crop it returned, and the frame->crop affine."""

    original: Frame
    generated: Frame
    affine: Affine


@dataclass(frozen=True)
class Region:
    """A frame rectangle [x0, x1) x [y0, y1) and which of its sides the frame border cut (left, top, right, bottom)."""

    x0: int
    y0: int
    x1: int
    y1: int
    cut: tuple[bool, bool, bool, bool]

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


# ---------------------------------------------------------------- the face mask (pure, crop coordinates)


def build_face_mask(size: int, feather: float = 0.08, scale: float = 1.0) -> Mask:
    """(size, size) float32 mask in [0, 1] over brows, eyes, nose, mouth and chin of the aligned crop.

    An ellipse derived from the 5-point crop template (every crop is aligned to it). feather is the edge width as a
    fraction of size; the ramp lies entirely inside the ellipse, so the mask is exactly 0 on and outside it.
    """
    if size < 8 or not 0.0 < feather < 0.5 or not 0.5 <= scale <= 1.5:
        raise ValueError(f"build_face_mask: bad size {size}, feather {feather} or scale {scale}")
    template = crop_template(size)
    eyes, mouth = template[:2].mean(axis=0), template[3:].mean(axis=0)
    eye_distance = float(np.linalg.norm(template[1] - template[0]))
    top = eyes[1] - 0.6 * eye_distance  # just above the brows
    bottom = mouth[1] + 0.6 * (mouth[1] - eyes[1])  # the chin
    center = np.array([(eyes[0] + mouth[0]) / 2, (top + bottom) / 2])
    axes = scale * np.array([1.1 * eye_distance, (bottom - top) / 2])
    inside = -_ellipse_distance(size, center, axes)
    return _smoothstep(inside / (feather * size)).astype(np.float32)


def _ellipse_distance(size: int, center: NDArray, axes: NDArray) -> NDArray[np.float64]:
    """First-order signed distance (pixels, negative inside) from each pixel centre to an axis-aligned ellipse."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (x - center[0]) / axes[0], (y - center[1]) / axes[1]
    rho = np.hypot(u, v)
    # |grad rho| turns the normalised radius into pixels; guarded at the centre where it is undefined.
    grad = np.hypot(u / axes[0], v / axes[1]) / np.maximum(rho, 1e-9)
    return (rho - 1.0) / np.maximum(grad, 1e-9)


def _smoothstep(t: NDArray) -> NDArray:
    """C1 ramp from 0 (t <= 0) to 1 (t >= 1): a soft edge without a Gaussian blur's infinite tail."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------- geometry


def face_region(mask: Mask, affine: Affine, frame_shape: tuple[int, ...]) -> Region | None:
    """The frame rectangle covered by the mask's support once warped back; None when it misses the frame."""
    rows, cols = np.nonzero(mask > 0)
    if rows.size == 0:
        return None
    # Pixel centres sit at integers, so the support spans half a pixel beyond its first and last centres.
    left, top, right, bottom = cols.min() - 0.5, rows.min() - 0.5, cols.max() + 0.5, rows.max() + 0.5
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64)
    inverse = cv2.invertAffineTransform(affine)
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - _WARP_MARGIN
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + _WARP_MARGIN + 1
    height, width = frame_shape[:2]
    cut = (bool(x0 < 0), bool(y0 < 0), bool(x1 > width), bool(y1 > height))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return Region(int(x0), int(y0), int(x1), int(y1), cut)


def _region_affine(affine: Affine, region: Region) -> Affine:
    """The frame->crop affine re-based so that region pixel (0, 0) is frame pixel (x0, y0)."""
    shifted = affine.astype(np.float64).copy()
    shifted[:, 2] += affine[:, :2] @ np.array([region.x0, region.y0], dtype=np.float64)
    return shifted


def _warp_to_region(image: NDArray, affine: Affine, region: Region, border: int = cv2.BORDER_CONSTANT) -> NDArray:
    """Sample a crop-space image at every region pixel (bilinear); only the region is computed, not the frame."""
    size = (region.x1 - region.x0, region.y1 - region.y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # the matrix already maps destination (frame) -> source (crop)
    return cv2.warpAffine(image, _region_affine(affine, region), size, flags=flags, borderMode=border)


def _antialias(image: NDArray, affine: Affine) -> NDArray:
    """Blur a crop-space image before warping it back when the crop is larger than the face (a downscale)."""
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))  # crop pixels per frame pixel
    sigma = (scale - 1.0) / 2.0  # scikit-image's anti-aliasing sigma for a downscale by `scale`
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------- paste back


def paste_back(
    frame: Frame, crop: Frame, affine: Affine, mask: Mask, mode: BlendMode, original: Frame | None = None
) -> Frame:
    """Return a copy of frame with crop (crop coordinates, warped back by affine) blended in under mask.

    With original (the crop the generator received) only crop - original is pasted (see the module docstring).
    Pixels where the warped mask is 0 are bit-exact copies of frame.
    """
    _check_inputs(frame, crop, affine, mask, mode, original)
    result = frame.copy()
    region = face_region(mask, affine, frame.shape)
    if region is None:
        return result
    base = frame[region.slices]
    alpha = _warp_to_region(mask, affine, region)
    target = _target_pixels(base, crop, original, affine, region)
    if mode == "seamless":
        target = clone_region(_to_uint8(target), base, alpha, region.cut).astype(np.float32)
    result[region.slices] = _composite(base, target, alpha)
    return result


def blend_faces(frame: Frame, edits: Sequence[FaceEdit], mask: Mask, mode: BlendMode) -> Frame:
    """Paste several faces' changes into one frame, one after the other (later faces win where they overlap)."""
    result = frame
    for edit in edits:
        result = paste_back(result, edit.generated, edit.affine, mask, mode, original=edit.original)
    return result.copy() if result is frame else result


def _target_pixels(base: Frame, crop: Frame, original: Frame | None, affine: Affine, region: Region) -> NDArray:
    """(h, w, 3) float32: what the region should become where the mask is 1."""
    if original is None:
        warped = _warp_to_region(_antialias(crop, affine), affine, region, cv2.BORDER_REPLICATE)
        return warped.astype(np.float32)
    change = crop.astype(np.float32) - original.astype(np.float32)
    return base.astype(np.float32) + _warp_to_region(_antialias(change, affine), affine, region)


def _composite(base: Frame, target: NDArray, alpha: Mask) -> Frame:
    """base + alpha * (target - base), rounded; exactly base wherever alpha is 0 or target equals base."""
    blended = base.astype(np.float32) + alpha[..., None] * (target - base.astype(np.float32))
    return _to_uint8(blended)


def _to_uint8(image: NDArray) -> Frame:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- Poisson (seamless) cloning


def clone_region(source: Frame, base: Frame, alpha: Mask, cut: tuple[bool, bool, bool, bool]) -> Frame:
    """cv2.seamlessClone (NORMAL_CLONE) of source into base, both (h, w, 3), under the soft mask alpha.

    Sides in `cut` lie on the frame border: there the padding carries the source, so the edit runs freely to the
    border instead of being pulled back to the old pixels. Sizes are chosen so OpenCV's DST solver gets fast lengths.
    """
    height, width = alpha.shape
    pads = _clone_pads(width, height)
    source_p = cv2.copyMakeBorder(source, *pads, cv2.BORDER_REPLICATE)
    base_p = source_p.copy()  # border padding = source, so frame-border sides are free ...
    inner = (slice(pads[0], pads[0] + height), slice(pads[2], pads[2] + width))
    base_p[inner] = base
    for side in _uncut_pads(cut, pads, base_p.shape):  # ... and other sides keep the old frame as boundary
        base_p[side] = cv2.copyMakeBorder(base, *pads, cv2.BORDER_REPLICATE)[side]
    mask_p = _clone_mask(alpha, pads, cut)
    center = (1 + (mask_p.shape[1] - 2) // 2, 1 + (mask_p.shape[0] - 2) // 2)
    cloned = cv2.seamlessClone(source_p, base_p, mask_p, center, cv2.NORMAL_CLONE)
    return cloned[inner]


def _clone_pads(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding: _CLONE_PAD each side, plus bottom/right to reach fast DFT lengths."""
    padded_w, padded_h = (_fast_clone_side(n + 2 * _CLONE_PAD - 2) + 2 for n in (width, height))
    return _CLONE_PAD, padded_h - height - _CLONE_PAD, _CLONE_PAD, padded_w - width - _CLONE_PAD


def _fast_clone_side(n: int) -> int:
    """Smallest side m >= n whose OpenCV Poisson DFT length 2m - 2 is a fast (2, 3, 5-smooth) size."""
    m = n
    while cv2.getOptimalDFTSize(2 * m - 2) != 2 * m - 2:
        m += 1
    return m


def _uncut_pads(
    cut: tuple[bool, bool, bool, bool], pads: tuple[int, int, int, int], shape: tuple[int, ...]
) -> list[tuple[slice, slice]]:
    """Slices of the padding strips on sides the frame border did not cut (left, top, right, bottom order)."""
    top, bottom, left, right = pads
    height, width = shape[:2]
    strips = [
        (slice(None), slice(0, left)),
        (slice(0, top), slice(None)),
        (slice(None), slice(width - right, width)),
        (slice(height - bottom, height), slice(None)),
    ]
    return [strip for strip, is_cut in zip(strips, cut) if not is_cut]


def _clone_mask(alpha: Mask, pads: tuple[int, int, int, int], cut: tuple[bool, bool, bool, bool]) -> NDArray[np.uint8]:
    """uint8 gradient weights for seamlessClone whose bounding rect is exactly the image minus its 1 px ring."""
    mask = cv2.copyMakeBorder(_to_uint8(alpha * 255.0), *pads, cv2.BORDER_REPLICATE)
    for side in _uncut_pads(cut, pads, mask.shape):
        mask[side] = 0  # away from the frame border the mask must end inside the region
    # Two 1-weight corner marks pin OpenCV's ROI (the mask's bounding rect) to the chosen fast size and a known
    # centre; its 3-pixel erosion removes them before they weigh any gradient.
    mask[1, 1] = max(mask[1, 1], 1)
    mask[-2, -2] = max(mask[-2, -2], 1)
    return mask


# ---------------------------------------------------------------- checks


def _check_inputs(
    frame: Frame, crop: Frame, affine: Affine, mask: Mask, mode: BlendMode, original: Frame | None
) -> None:
    """Raise ValueError naming the first argument with the wrong shape, dtype or value."""
    if mode not in BLEND_MODES:
        raise ValueError(f"mode: expected one of {', '.join(BLEND_MODES)}, got {mode!r}")
    for name, image in (("frame", frame), ("crop", crop), ("original", crop if original is None else original)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected (H, W, 3) uint8 BGR, got {getattr(image, 'dtype', type(image))} "
                             f"{getattr(image, 'shape', None)}")
    if original is not None and original.shape != crop.shape:
        raise ValueError(f"original: shape {original.shape} differs from crop {crop.shape}")
    if mask.shape != crop.shape[:2] or not np.issubdtype(mask.dtype, np.floating):
        raise ValueError(f"mask: expected float {crop.shape[:2]} like the crop, got {mask.dtype} {mask.shape}")
    if affine.shape != (2, 3) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:, :2])) < 1e-12:
        raise ValueError(f"affine: expected a finite invertible (2, 3) matrix, got {affine.tolist()}")
