"""The artefact measure on a real face: paint at the mouth corners is flagged, shading and the unchanged face are not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clips import portrait
from pipeline.evaluation.artefacts import FLAG_SHARE, NOSE_TIP, artefact_shares, mouth_region
from pipeline.faces.align import align_face, select_faces
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.faces.landmarks import LandmarkDetector
from usgan.geometry import MOUTH_CORNERS
from usgan.texture import OUTER_LIP

SIZE = 256


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray, LandmarkDetector]:
    """A real aligned crop, its crop-unit landmarks and the landmark net."""
    image = portrait()
    found = select_faces(FaceDetector(DetectorConfig()).detect_faces(image), "largest")[0]
    crop = align_face(image, found, SIZE).image
    detector = LandmarkDetector()
    return crop, detector.detect([crop])[0] / np.float32(SIZE), detector


def corner_blobs(crop: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The crop with a soft blob of colour beside each mouth corner, as the generator paints them."""
    layer = np.zeros(crop.shape[:2], np.float32)
    for index in MOUTH_CORNERS:
        x, y = (points[index] * SIZE).astype(int)
        cv2.circle(layer, (x + (-8 if index == MOUTH_CORNERS[0] else 8), y), 9, 1.0, -1)
    alpha = cv2.GaussianBlur(layer, (0, 0), 3)[..., None] * 0.8
    return (crop * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)


def test_the_unchanged_face_scores_nothing(face):
    crop, _, detector = face
    assert artefact_shares(detector, [crop], [crop.copy()])[0] == 0.0


def test_brown_blobs_at_the_mouth_corners_are_flagged(face):
    crop, points, detector = face
    share = artefact_shares(detector, [crop], [corner_blobs(crop, points, (40, 55, 75))])[0]
    assert share > FLAG_SHARE


def test_shading_the_same_skin_is_not_paint(face):
    """A fold's or a cheek's shadow darkens the skin without changing its colour: not an artefact, however dark."""
    crop, points, detector = face
    region = mouth_region(points, SIZE).astype(np.float32)
    shade = 1.0 - 0.45 * cv2.GaussianBlur(region, (0, 0), 2)[..., None]
    shaded = np.clip(crop * shade, 0, 255).astype(np.uint8)
    assert artefact_shares(detector, [crop], [shaded])[0] < FLAG_SHARE / 4


def test_the_region_leaves_the_opening_and_the_nose_out(face):
    _, points, _ = face
    region = mouth_region(points, SIZE)
    lips_centre = (points[list(OUTER_LIP)].mean(0) * SIZE).astype(int)
    nose_tip = (points[NOSE_TIP] * SIZE).astype(int)
    assert region.sum() > 0.02 * SIZE * SIZE
    assert not region[nose_tip[1] - 3, nose_tip[0]]
    assert region[lips_centre[1], lips_centre[0] - int(0.12 * SIZE)]  # beside the lips, inside the ring


def test_no_outputs_no_shares(face):
    _, _, detector = face
    assert artefact_shares(detector, [], []).shape == (0,)


def test_landmarks_already_read_give_the_same_shares(face):
    crop, points, detector = face
    painted = corner_blobs(crop, points, (40, 55, 75))
    assert artefact_shares(detector, [crop], [painted], points[None]) == pytest.approx(
        artefact_shares(detector, [crop], [painted]))
