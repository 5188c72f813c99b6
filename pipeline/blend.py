"""The blend stage: paste a generated face crop back into its frame, with a feathered or a Poisson (seamless) edge.

Identity-exactness, and why the change is pasted rather than the crop: the crop is a resampled copy of the frame, so
warping the generated crop back resamples the face a second time (even an *unchanged* crop comes back blurred
wherever the face is larger than the crop). When the caller passes the crop the
generator received (`original`), only the generator's change (generated - original) is warped back and added to the
untouched frame pixels: a zero change is bit-exact identity in feather mode (seamless: within OpenCV's 1-level
truncation), and the face keeps the frame's full-resolution detail. US-GAN itself predicts a residual
(output = main([x, c]) + x), so pasting the residual is the natural fit. The trade-off: where the generator moves an
edge (an opening mouth), detail finer than the crop's resolution stays where it was; at 128 px crops of large faces
that is faint texture, far less visible than a uniformly blurred face. original=None pastes the crop itself.

Modes: feather alpha-blends under the warped face mask. seamless first solves OpenCV's Poisson problem over the face
region (keeping the change's gradients, removing its offset against the surrounding frame), then alpha-blends that
under the same mask, so pixels outside the mask stay bit-exact in both modes. Only the mask's bounding box in the
frame is warped and cloned, never the whole frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.faces.align import crop_template
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
    top = eyes[1] - 0.75 * eye_distance  # above the brows, with room for raised ones (surprise)
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
    frame: Frame,
    crop: Frame,
    affine: Affine,
    mask: Mask,
    mode: BlendMode,
    original: Frame | None = None,
    clone_scale: float = 1.0,
) -> Frame:
    """Return a copy of frame with crop (crop coordinates, warped back by affine) blended in under mask.

    With original (the crop the generator received) only crop - original is pasted (see the module docstring).
    Pixels where the warped mask is 0 are bit-exact copies of frame. clone_scale < 1 speeds up seamless mode
    (see clone_region); feather ignores it.
    """
    _check_inputs(frame, crop, affine, mask, mode, original)
    if not 0.1 <= clone_scale <= 1.0:
        raise ValueError(f"clone_scale: expected a value in [0.1, 1], got {clone_scale}")
    result = frame.copy()
    region = face_region(mask, affine, frame.shape)
    if region is None:
        logger.debug("face mask lies entirely outside the %sx%s frame", frame.shape[1], frame.shape[0])
        return result
    base = frame[region.slices]
    alpha = _warp_to_region(mask, affine, region)
    target = _target_pixels(base, crop, original, affine, region)
    if mode == "seamless":
        target = clone_region(_to_uint8(target), base, alpha, region.cut, clone_scale).astype(np.float32)
    result[region.slices] = _composite(base, target, alpha)
    return result


def blend_faces(
    frame: Frame, edits: Sequence[FaceEdit], mask: Mask, mode: BlendMode, clone_scale: float = 1.0
) -> Frame:
    """Paste several faces' changes into one frame, one after the other (overlapping changes add up)."""
    result = frame
    for edit in edits:
        result = paste_back(result, edit.generated, edit.affine, mask, mode, edit.original, clone_scale)
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


def clone_region(
    source: Frame, base: Frame, alpha: Mask, cut: tuple[bool, bool, bool, bool], scale: float = 1.0
) -> Frame:
    """cv2.seamlessClone (NORMAL_CLONE) of source into base, both (h, w, 3), under the soft mask alpha.

    Sides in `cut` lie on the frame border: there the padding carries the source, so the edit runs freely to the
    border instead of being pulled back to the old pixels. Elsewhere the padding is the old frame.
    scale < 1 solves at that scale, but only for the membrane (clone - source), which is smooth, and adds it to the
    full-resolution source: face detail is untouched (at 0.5 it looks the same as the full solve, about 4x faster).
    """
    if scale >= 1.0:
        return _clone(source, base, alpha, cut)
    height, width = alpha.shape
    size = (max(16, round(width * scale)), max(16, round(height * scale)))
    small = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in (source, base, alpha)]
    membrane = _clone(*small, cut).astype(np.float32) - small[0].astype(np.float32)
    membrane = cv2.resize(membrane, (width, height), interpolation=cv2.INTER_LINEAR)
    return _to_uint8(source.astype(np.float32) + membrane)


def _clone(source: Frame, base: Frame, alpha: Mask, cut: tuple[bool, bool, bool, bool]) -> Frame:
    """clone_region at full resolution."""
    pad = _CLONE_PAD
    source_p = cv2.copyMakeBorder(source, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    base_p = cv2.copyMakeBorder(base, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    mask_p = cv2.copyMakeBorder(_to_uint8(alpha * 255.0), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for side, is_cut in zip(_pad_strips(base_p.shape), cut):
        if is_cut:
            base_p[side] = source_p[side]
        else:
            mask_p[side] = 0  # away from the frame border the mask must end inside the region
    # Two 1-weight corner marks pin OpenCV's ROI (the mask's bounding rect, inside the 1 px ring it zeroes) to the
    # whole padded image, so the centre below is exact and nothing shifts; its 3 px erosion removes the marks.
    mask_p[1, 1] = max(mask_p[1, 1], 1)
    mask_p[-2, -2] = max(mask_p[-2, -2], 1)
    center = (1 + (mask_p.shape[1] - 2) // 2, 1 + (mask_p.shape[0] - 2) // 2)
    cloned = cv2.seamlessClone(source_p, base_p, mask_p, center, cv2.NORMAL_CLONE)
    return cloned[pad:-pad, pad:-pad]


def _pad_strips(shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The _CLONE_PAD-wide strips along the left, top, right and bottom of a padded image."""
    pad = _CLONE_PAD
    return [
        (slice(None), slice(0, pad)),
        (slice(0, pad), slice(None)),
        (slice(None), slice(shape[1] - pad, None)),
        (slice(shape[0] - pad, None), slice(None)),
    ]


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
