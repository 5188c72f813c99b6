"""Tests for the blend stage: exact identity paste-back, mask containment, frame borders, geometry (the face mask:
test_blend_mask.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import psnr
from pipeline.blend import FaceEdit, blend_faces, build_face_mask, clone_region, face_region, paste_back

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODES = ("feather", "seamless")
VARIANTS = [("feather", 1.0), ("seamless", 1.0), ("seamless", 0.5)]  # (mode, clone_scale)


def affine_at(center: tuple[float, float], face_px: float, size: int, angle: float = 0.0) -> np.ndarray:
    """Frame->crop affine that maps a face_px-wide square around center (frame pixels) onto a size crop."""
    scale = size / face_px
    cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    linear = scale * np.array([[cos, sin], [-sin, cos]])
    return np.hstack([linear, (np.array([size / 2, size / 2]) - linear @ np.asarray(center))[:, None]])


def textured_frame(height: int = 360, width: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth random BGR texture in [30, 220]: every resampling error shows, and +-40 changes never clip."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 30, 220, cv2.NORM_MINMAX)


def align(frame: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The crop exactly as pipeline.faces.align.align_face makes it."""
    return cv2.warpAffine(frame, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warped_support(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], grow: int = 2) -> np.ndarray:
    """Frame pixels that may see the mask: its support dilated by `grow` crop pixels, warped back (nearest)."""
    support = cv2.dilate((mask > 0).astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(support, affine, (shape[1], shape[0]), flags=flags).astype(bool)


# ---------------------------------------------------------------- exact identity and containment

PLACEMENTS = {
    "centre": ((320, 180), 200, 10.0),
    "upscaled-small-face": ((300, 200), 60, -20.0),
    "left-edge": ((12, 180), 200, 15.0),
    "corner-partly-outside": ((630, 350), 220, 0.0),
    "mostly-outside": ((-40, -30), 200, 30.0),
}


@pytest.mark.parametrize("mode, clone_scale", VARIANTS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_unchanged_crop_pastes_back_to_the_same_frame(mode, clone_scale, placement):
    center, face_px, angle = PLACEMENTS[placement]
    frame = textured_frame()
    affine = affine_at(center, face_px, 128, angle)
    crop = align(frame, affine, 128)
    before = frame.copy()
    out = paste_back(frame, crop.copy(), affine, build_face_mask(128), mode, crop, clone_scale)
    assert np.array_equal(frame, before), "the input frame was modified"
    if mode == "feather":
        assert np.array_equal(out, frame)
    else:  # OpenCV's Poisson solver truncates its float result: at most 1 level off
        assert np.abs(out.astype(int) - frame).max() <= 1


@pytest.mark.parametrize("mode, clone_scale", VARIANTS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_pixels_outside_the_mask_are_bit_exact(mode, clone_scale, placement):
    center, face_px, angle = PLACEMENTS[placement]
    frame = textured_frame(seed=1)
    affine = affine_at(center, face_px, 128, angle)
    mask = build_face_mask(128)
    crop = align(frame, affine, 128)
    noise = np.random.default_rng(2).integers(-60, 61, crop.shape)
    generated = np.clip(crop.astype(int) + noise, 0, 255).astype(np.uint8)
    out = paste_back(frame, generated, affine, mask, mode, crop, clone_scale)
    support = warped_support(mask, affine, frame.shape)
    assert np.array_equal(out[~support], frame[~support])
    assert np.any(out[support] != frame[support]), "the change never reached the frame"


def test_face_fully_outside_the_frame_leaves_it_unchanged():
    frame = textured_frame()
    affine = affine_at((-500, 100), 200, 128)
    crop = np.full((128, 128, 3), 255, np.uint8)
    out = paste_back(frame, crop, affine, build_face_mask(128), "seamless")
    assert out is not frame and np.array_equal(out, frame)


# ---------------------------------------------------------------- the change lands where it should


@pytest.mark.parametrize("mode", MODES)
def test_a_crop_feature_lands_at_its_frame_position(mode):
    frame = textured_frame()
    affine = affine_at((300, 170), 180, 128, angle=25.0)
    crop = align(frame, affine, 128)
    generated = crop.copy()
    cv2.circle(generated, (64, 70), 4, (0, 0, 0), -1)  # a dark dot at crop (64, 70), well inside the mask
    out = paste_back(frame, generated, affine, build_face_mask(128), mode, original=crop)
    darkening = (frame.astype(int) - out).sum(axis=2)
    y, x = np.unravel_index(np.argmax(cv2.GaussianBlur(darkening.astype(np.float32), (0, 0), 2)), darkening.shape)
    inverse = cv2.invertAffineTransform(affine)
    expected = inverse[:, :2] @ np.array([64.0, 70.0]) + inverse[:, 2]
    assert np.hypot(x - expected[0], y - expected[1]) <= 1.5


def test_feather_adds_the_change_and_seamless_keeps_its_edges():
    frame = textured_frame()
    affine = affine_at((320, 180), 256, 128)  # 2 frame pixels per crop pixel
    crop = align(frame, affine, 128)
    generated = crop.copy()
    generated[60:80, 54:74] = np.clip(crop[60:80, 54:74].astype(int) + 40, 0, 255)
    inside, outside = (180 + 2 * 5, 320), (180 + 2 * 22, 320)  # crop rows 69 (in the block) and 86 (below it)
    for mode in MODES:
        out = paste_back(frame, generated, affine, build_face_mask(128), mode, original=crop)
        change = out.astype(int) - frame
        step = change[inside].mean() - change[outside].mean()
        assert step == pytest.approx(40, abs=4), mode  # Poisson keeps gradients: the block's edge survives


def test_seamless_lets_an_edit_run_to_the_frame_border():
    frame = textured_frame()
    affine = affine_at((10, 180), 200, 128)  # face cut by the left frame border
    crop = align(frame, affine, 128)
    generated = np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8)
    out = paste_back(frame, generated, affine, build_face_mask(128), "seamless", original=crop)
    # A constant change has no gradient, so Poisson removes it where the old frame surrounds it, but on the
    # frame border the padding carries the new pixels: no seam to hide there, so the edit must survive.
    assert (out[170:190, 0].astype(int) - frame[170:190, 0]).mean() > 30


def test_half_scale_clone_matches_the_full_solve():
    frame = textured_frame(seed=3)
    affine = affine_at((320, 180), 300, 128, angle=-10.0)
    crop = align(frame, affine, 128)
    generated = crop.astype(np.float32)
    generated[..., 2] += 15  # a colour cast for Poisson to remove ...
    cv2.ellipse(generated, (64, 95), (14, 6), 0, 0, 360, (60, 50, 120), -1)  # ... and a new mouth shape to keep
    generated = np.clip(generated, 0, 255).astype(np.uint8)
    mask = build_face_mask(128)
    full = paste_back(frame, generated, affine, mask, "seamless", crop)
    fast = paste_back(frame, generated, affine, mask, "seamless", crop, clone_scale=0.5)
    region = face_region(mask, affine, frame.shape)
    assert psnr(fast[region.slices], full[region.slices]) > 45
    assert psnr(full[region.slices], frame[region.slices]) < 35  # the edit is really there


def test_small_face_change_is_antialiased_when_warped_back():
    frame = textured_frame()
    affine = affine_at((320, 180), 40, 128)  # the crop is 3.2x larger than the face
    crop = align(frame, affine, 128)
    checker = np.where((np.indices((128, 128)).sum(axis=0) % 2)[..., None] == 1, 40, -40)
    generated = np.clip(crop.astype(int) + checker, 0, 255).astype(np.uint8)
    out = paste_back(frame, generated, affine, build_face_mask(128), "feather", original=crop)
    # The checkerboard lies far above the frame's Nyquist limit: it must vanish, not alias into a +-40 pattern.
    assert np.abs(out.astype(int) - frame).max() <= 8


# ---------------------------------------------------------------- the classic path, several faces, bad input


def test_without_original_the_crop_itself_is_pasted():
    frame = textured_frame()
    affine = affine_at((320, 180), 128, 128)  # 1:1 scale, so the pasted crop is nearly the frame again
    crop = align(frame, affine, 128)
    mask = build_face_mask(128)
    out = paste_back(frame, np.zeros_like(crop), affine, mask, "feather")
    centre = cv2.transform(np.array([[[64.0, 76.0]]]), cv2.invertAffineTransform(affine))[0, 0].astype(int)
    assert out[centre[1], centre[0]].max() <= 2  # black crop pasted at the mask core
    assert psnr(paste_back(frame, crop, affine, mask, "feather"), frame) > 35


def test_blend_faces_applies_every_face_and_copies_the_frame():
    frame = textured_frame()
    mask = build_face_mask(128)
    edits = []
    for center in ((160, 180), (480, 180)):
        affine = affine_at(center, 200, 128)
        crop = align(frame, affine, 128)
        edits.append(FaceEdit(crop, 255 - crop, affine))
    out = blend_faces(frame, edits, mask, "feather")
    for center in ((160, 180), (480, 180)):
        assert np.abs(out[center[1], center[0]].astype(int) - frame[center[1], center[0]]).max() > 20
    empty = blend_faces(frame, [], mask, "feather")
    assert empty is not frame and np.array_equal(empty, frame)


def test_clone_region_places_the_source_without_shift():
    base = textured_frame(120, 150)
    source = base.copy()
    source[50:70, 60:90] = 255 - source[50:70, 60:90]
    alpha = np.zeros((120, 150), np.float32)
    alpha[30:90, 40:110] = 1.0
    cloned = clone_region(source, base, alpha, (False, False, False, False))
    # A one-pixel shift of the ROI would smear the inverted block's texture; its gradients must match the source.
    gradient = np.diff(cloned[52:68, 62:88].astype(int), axis=1) - np.diff(source[52:68, 62:88].astype(int), axis=1)
    assert np.abs(gradient).max() <= 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "poisson"}, "mode"),
        ({"frame": np.zeros((10, 10), np.uint8)}, "frame"),
        ({"crop": np.zeros((128, 128, 3), np.float32)}, "crop"),
        ({"mask": np.ones((64, 64), np.float32)}, "mask"),
        ({"affine": np.zeros((2, 3))}, "affine"),
        ({"original": np.zeros((64, 64, 3), np.uint8)}, "original"),
        ({"clone_scale": 0.0}, "clone_scale"),
    ],
)
def test_bad_inputs_name_the_argument(change, message):
    frame = textured_frame(64, 64)
    args = {
        "frame": frame, "crop": np.zeros((128, 128, 3), np.uint8), "affine": affine_at((32, 32), 50, 128),
        "mask": build_face_mask(128), "mode": "feather", "original": None, "clone_scale": 1.0,
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        paste_back(**args)


def test_face_region_is_the_warped_support_plus_margin():
    mask = build_face_mask(128)
    affine = affine_at((320, 180), 256, 128)
    region = face_region(mask, affine, (360, 640, 3))
    support = warped_support(mask, affine, (360, 640, 3), grow=0)
    ys, xs = np.nonzero(support)
    assert region.x0 <= xs.min() and region.x1 > xs.max() and region.y0 <= ys.min() and region.y1 > ys.max()
    assert region.x1 - region.x0 <= xs.max() - xs.min() + 10  # tight: the warp covers the face, not the frame
    assert region.cut == (False, False, False, False)


# ---------------------------------------------------------------- real frames (../shared)


@pytest.fixture(scope="module")
def real_faces():
    """(frame, AlignedCrop) for the first frame of two shared clips, found by the real SCRFD detector."""
    if not (SHARED / "media" / "video").is_dir():
        pytest.skip(f"{SHARED}/media/video not found (shared data is not checked out)")
    import av

    from pipeline.faces.align import align_face
    from pipeline.faces.detector import FaceDetector

    detector, found = FaceDetector(), []
    for name in ("d13.mp4", "talk2.mp4"):
        with av.open(str(SHARED / "media" / "video" / name)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
        faces = detector.detect_faces(frame)
        assert faces, f"no face found in {name}"
        found.append((frame, align_face(frame, faces[0], 128)))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode, clone_scale", VARIANTS)
def test_identity_generator_on_real_frames(real_faces, mode, clone_scale):
    mask = build_face_mask(128)
    for frame, aligned in real_faces:
        region = face_region(mask, aligned.affine, frame.shape)
        out = paste_back(frame, aligned.image.copy(), aligned.affine, mask, mode, aligned.image, clone_scale)
        classic = paste_back(frame, aligned.image.copy(), aligned.affine, mask, mode)
        face_psnr = psnr(out[region.slices], frame[region.slices])
        assert face_psnr >= 45.0
        # Pasting the change instead of the re-resampled crop is the point: it must beat the classic path.
        assert face_psnr > psnr(classic[region.slices], frame[region.slices])
