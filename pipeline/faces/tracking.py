"""Face tracking across video frames: persistent track ids, One-Euro landmark smoothing, and faces interpolated
between detection rounds (the detector runs on every detect_every-th frame)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from pipeline.faces.detector import FaceDetector
from pipeline.types import BBox, Face, VideoFrame


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
    can be interpolated between both, which follows moving faces more closely than holding the last ones. Frames
    after the last detection hold its faces.
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
