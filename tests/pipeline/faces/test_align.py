"""pipeline.faces.align: the pure affine maths against InsightFace's, the aligner on a real photo, face selection."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from clips import make_face
from pipeline.faces.align import align_face, crop_template, estimate_affine, select_faces


def transform_points(points, affine) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points."""
    return np.asarray(points, dtype=np.float64) @ affine[:, :2].T + affine[:, 2]


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """(2, 3) rotation by angle, uniform scale, then translation."""
    a = math.radians(angle_deg)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([linear, np.array(shift, dtype=np.float64)[:, None]])


# ---------------------------------------------------------------- estimate_affine (pure)


@pytest.mark.parametrize("size", [128, 256, 96])
def test_template_maps_to_itself_with_identity(size):
    affine = estimate_affine(crop_template(size), size)
    np.testing.assert_allclose(affine, np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-9)


@pytest.mark.parametrize("angle, scale, shift", [(0, 1.0, (30, -5)), (25, 2.5, (400, 120)), (-70, 0.4, (-3, 9))])
def test_moved_face_gives_the_inverse_transform(angle, scale, shift):
    size = 128
    moved = similarity(angle, scale, shift)
    landmarks = transform_points(crop_template(size), moved)
    affine = estimate_affine(landmarks, size)
    inverse = cv2.invertAffineTransform(moved)
    np.testing.assert_allclose(affine, inverse, atol=1e-9)


@pytest.mark.parametrize("size", [128, 256])
def test_matches_insightface_estimate_norm(size):
    from insightface.utils.face_align import estimate_norm

    rng = np.random.default_rng(size)
    landmarks = (transform_points(crop_template(size), similarity(12, 1.7, (50, 80)))
                 + rng.normal(0, 3, (5, 2))).astype(np.float32)
    np.testing.assert_allclose(estimate_affine(landmarks, size), estimate_norm(landmarks, size), atol=1e-3)


def test_template_is_insightface_norm_crop_at_128():
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_allclose(crop_template(128), arcface_dst + [8, 0], atol=1e-4)
    np.testing.assert_allclose(crop_template(256), (arcface_dst + [8, 0]) * 2, atol=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.zeros((4, 2))])
def test_bad_landmarks_raise(bad):
    with pytest.raises(ValueError):
        estimate_affine(bad, 128)



# ---------------------------------------------------------------- alignment


def test_align_face_undoes_a_known_placement(detector, portrait):
    """Paste an aligned crop into a frame at a known pose; detection + align_face must recover the crop."""
    reference = align_face(portrait, detector.detect_faces(portrait)[0], 128).image
    placement = similarity(-20, 1.8, (150, 60))
    frame = cv2.warpAffine(reference, placement, (480, 400), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expected = transform_points(crop_template(128), placement)

    exact = align_face(frame, make_face(expected), 128)
    np.testing.assert_allclose(exact.affine, cv2.invertAffineTransform(placement), atol=1e-4)  # float32 landmarks
    inner = np.s_[16:-16, 16:-16]  # border pixels come from edge replication, not the face
    assert np.abs(exact.image[inner].astype(int) - reference[inner]).mean() < 3

    detected = detector.detect_faces(frame)
    assert len(detected) == 1
    np.testing.assert_allclose(detected[0].landmarks, expected, atol=6)
    crop = align_face(frame, detected[0], 128)
    assert crop.image.shape == (128, 128, 3) and crop.face is detected[0]
    assert np.abs(crop.image[inner].astype(int) - reference[inner]).mean() < 12


def test_align_face_near_the_edge_replicates_instead_of_black(portrait):
    landmarks = crop_template(128) * 1.5 - [90, 0]  # face partly outside the frame on the left
    crop = align_face(portrait, make_face(landmarks), 128)
    inside = cv2.warpAffine(np.ones(portrait.shape[:2], np.uint8), crop.affine, (128, 128))
    outside = inside == 0
    assert outside.sum() > 500
    # The frame's left edge is mid-grey; black (0) there would mean a constant border.
    assert crop.image[outside].mean() > 0.5 * portrait[:, 0].mean()


# ---------------------------------------------------------------- selection


def test_select_faces():
    small = make_face(crop_template(64))
    large = make_face(crop_template(256))
    assert select_faces([small, large], "largest") == [large]
    assert select_faces([small, large], "all") == [small, large]
    assert select_faces([], "largest") == []
