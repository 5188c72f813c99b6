"""pipeline.faces.tracking: One-Euro smoothing, track ids, and detection every n-th frame with interpolation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from clips import make_face
from pipeline.faces.align import crop_template
from pipeline.faces.detector import FaceDetector
from pipeline.faces.tracking import FaceTracker, OneEuroFilter, TrackerConfig, track_faces
from pipeline.types import Face, VideoFrame


# ---------------------------------------------------------------- One-Euro filter


def test_one_euro_keeps_a_constant_signal():
    smoother = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    value = np.array([[3.0, -2.0], [7.5, 1.0]])
    outputs = [smoother(value, t / 30) for t in range(30)]
    np.testing.assert_allclose(outputs[-1], value)
    assert all(np.array_equal(out, value) for out in outputs)


def test_one_euro_reduces_noise():
    rng = np.random.default_rng(0)
    smoother = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    noisy = 10.0 + rng.normal(0, 1.0, 300)
    smoothed = np.array([smoother(np.array(x), t / 30) for t, x in enumerate(noisy)])
    assert np.std(smoothed[30:] - 10.0) < 0.35 * np.std(noisy[30:] - 10.0)


def test_one_euro_follows_fast_motion_with_little_lag():
    def lag(beta: float) -> float:
        smoother = OneEuroFilter(min_cutoff=1.0, beta=beta)
        times = np.arange(60) / 30
        positions = 300.0 * times  # 300 units per second
        out = [smoother(np.array(p), t) for p, t in zip(positions, times)]
        return float(positions[-1] - out[-1])

    assert lag(0.0) > 40  # a plain 1 Hz low-pass trails v / (2 pi fc) = 48 units behind
    assert lag(1.0) < 0.1 * lag(0.0)


def test_one_euro_ignores_repeated_timestamps():
    smoother = OneEuroFilter()
    smoother(np.array(1.0), 0.0)
    assert smoother(np.array(100.0), 0.0) == 1.0


# ---------------------------------------------------------------- tracking


def moving_face(x: float, y: float, size: float = 100.0) -> Face:
    return make_face(crop_template(128) * size / 128 + [x, y])


def test_tracker_keeps_ids_of_two_moving_faces():
    tracker = FaceTracker(TrackerConfig())
    ids = []
    for n in range(20):
        faces = [moving_face(50 + 4 * n, 100), moving_face(400 - 4 * n, 120 + 2 * n)]
        ids.append([face.track_id for face in tracker.update(faces, n / 30)])
    assert ids[0][0] != ids[0][1]
    assert all(frame_ids == ids[0] for frame_ids in ids)


def test_tracker_matches_whatever_the_detection_order():
    tracker = FaceTracker()
    first = tracker.update([moving_face(0, 0), moving_face(300, 0)], 0.0)
    swapped = tracker.update([moving_face(302, 1), moving_face(2, 1)], 1 / 30)
    assert [f.track_id for f in swapped] == [first[1].track_id, first[0].track_id]


def test_tracker_gives_a_new_face_a_new_id():
    tracker = FaceTracker()
    (a,) = tracker.update([moving_face(0, 0)], 0.0)
    b, c = tracker.update([moving_face(1, 0), moving_face(500, 0)], 1 / 30)
    assert b.track_id == a.track_id and c.track_id not in (a.track_id,)
    assert c.track_id >= 0


@pytest.mark.parametrize("misses, same_id", [(2, True), (3, False)])
def test_tracker_drops_a_track_after_max_missed(misses, same_id):
    tracker = FaceTracker(TrackerConfig(max_missed=3))
    (first,) = tracker.update([moving_face(10, 10)], 0.0)
    for n in range(misses):
        assert tracker.update([], (n + 1) / 30) == []
    (again,) = tracker.update([moving_face(10, 10)], (misses + 1) / 30)
    assert (again.track_id == first.track_id) is same_id


def test_tracker_smooths_landmark_jitter():
    rng = np.random.default_rng(1)
    tracker = FaceTracker(TrackerConfig(min_cutoff=1.0, beta=2.0))
    truth = moving_face(100, 100).landmarks
    errors_in, errors_out = [], []
    for n in range(60):
        noisy = truth + rng.normal(0, 2.0, truth.shape).astype(np.float32)
        (face,) = tracker.update([make_face(noisy)], n / 30)
        if n >= 10:
            errors_in.append(np.abs(noisy - truth).mean())
            errors_out.append(np.abs(face.landmarks - truth).mean())
    assert np.mean(errors_out) < 0.5 * np.mean(errors_in)


def test_track_faces_detects_every_nth_frame(detector, portrait):
    canvas = np.full((320, 400, 3), 200, np.uint8)
    frames = []
    for n in range(6):
        image = canvas.copy()
        image[10 : 10 + portrait.shape[0], 20 + 4 * n : 20 + 4 * n + portrait.shape[1]] = portrait
        frames.append(VideoFrame(index=n, image=image, pts=n, time_base=Fraction(1, 30), time=n / 30))
    results = list(track_faces(frames, detector, TrackerConfig(detect_every=3, interpolate=False)))
    assert [len(faces) for _, faces in results] == [1] * 6
    assert len({faces[0].track_id for _, faces in results}) == 1
    # Frames 1, 2 and 4, 5 hold the last smoothed faces instead of detecting.
    assert results[1][1][0] is results[0][1][0] and results[2][1][0] is results[0][1][0]
    assert results[3][1][0] is not results[0][1][0]
    assert results[3][1][0].landmarks[0, 0] > results[0][1][0].landmarks[0, 0]


class CountingDetector:
    """A real detector that counts its calls."""

    def __init__(self, detector: FaceDetector):
        self.detector, self.calls = detector, 0

    def detect_faces(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.detector.detect_faces(image)


def test_track_faces_interpolates_between_detections(detector, portrait):
    canvas = np.full((320, 420, 3), 200, np.uint8)
    frames = []
    for n in range(7):
        image = canvas.copy()
        image[10 : 10 + portrait.shape[0], 20 + 6 * n : 20 + 6 * n + portrait.shape[1]] = portrait
        frames.append(VideoFrame(index=n, image=image, pts=n, time_base=Fraction(1, 30), time=n / 30))
    counting = CountingDetector(detector)
    config = TrackerConfig(detect_every=3, smooth=False)
    results = list(track_faces(frames, counting, config))
    assert counting.calls == 3  # frames 0, 3 and 6
    assert [frame.index for frame, _ in results] == list(range(7))  # waiting frames keep their order
    x = [faces[0].landmarks[0, 0] for _, faces in results]
    np.testing.assert_allclose(x[1], x[0] + (x[3] - x[0]) / 3, atol=1e-3)
    np.testing.assert_allclose(x[2], x[0] + 2 * (x[3] - x[0]) / 3, atol=1e-3)
    assert x[0] < x[1] < x[2] < x[3] < x[4] < x[5] < x[6]
    assert len({faces[0].track_id for _, faces in results}) == 1


def test_track_faces_holds_after_the_last_detection(detector, portrait):
    frames = [VideoFrame(index=n, image=portrait, pts=n, time_base=Fraction(1, 30), time=n / 30) for n in range(5)]
    results = list(track_faces(frames, detector, TrackerConfig(detect_every=3)))
    assert len(results) == 5
    assert results[4][1][0] is results[3][1][0]  # no later detection to interpolate towards


def test_a_face_lost_at_the_next_detection_is_held_not_interpolated(detector, portrait):
    blank = np.full_like(portrait, 200)
    images = [portrait, portrait, blank]
    frames = [VideoFrame(index=n, image=image, pts=n, time_base=Fraction(1, 30), time=n / 30)
              for n, image in enumerate(images)]
    results = list(track_faces(frames, detector, TrackerConfig(detect_every=2)))
    assert results[1][1][0] is results[0][1][0]
    assert results[2][1] == []
