"""evaluate-video: flicker inside the face crops and mouth-opening correlation, on real clips made here."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from clips import make_clip, make_face, write_video
from pipeline.blend import build_face_mask
from pipeline.evaluation.sources import EvaluateError
from pipeline.evaluation.video_clips import (
    INNER_LIP_PAIRS, ClipSettings, crop_masks, measure_clip, mouth_opening, pearson,
)
from pipeline.faces.align import crop_template
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.faces.tracking import TrackerConfig
from pipeline.video.decode import decode_video

SETTINGS = ClipSettings(TrackerConfig(), 128, build_face_mask(128))


@pytest.fixture(scope="module")
def models() -> tuple[FaceDetector, LandmarkDetector]:
    return FaceDetector(DetectorConfig()), LandmarkDetector(threads=1)


def test_pearson_of_identical_opposite_and_flat_sequences():
    a = np.array([0.1, 0.3, 0.2, np.nan, 0.5])
    assert pearson(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson(a, 1.0 - 2 * a) == pytest.approx(-1.0, abs=1e-12)
    assert pearson(a, np.full(5, 0.2)) is None  # no variation: undefined
    assert pearson(a[:2], a[:2]) is None  # too few frames
    b = np.array([0.1, 0.3, np.nan, 7.0, 0.4])  # only frames 0, 1 and 4 have both
    assert pearson(a, b) == pytest.approx(np.corrcoef([0.1, 0.3, 0.5], [0.1, 0.3, 0.4])[0, 1])


def test_mouth_opening_is_the_mean_inner_lip_gap():
    points = np.zeros((2, 106, 2))
    for (upper, lower), gap in zip(INNER_LIP_PAIRS, (0.01, 0.04, 0.01)):
        points[1, lower] = (0.0, gap)
        points[:, upper] = (0.5, 0.0)
        points[1, upper] = (0.0, 0.0)
    opening = mouth_opening(points)
    assert opening[1] == pytest.approx(0.02) and opening[0] == pytest.approx(0.5)


def test_crop_masks_cover_the_faces_blend_region():
    template = crop_template(128)
    face = make_face(template * 0.5 + [100, 20])  # a 64-px face whose crop lands at (100, 20)
    mask = crop_masks((120, 240, 3), [face], SETTINGS)
    assert mask.shape == (120, 240) and mask.max() == pytest.approx(1.0, abs=1e-3)
    nose = np.round(template[2] * 0.5 + [100, 20]).astype(int)
    assert mask[nose[1], nose[0]] > 0.99 and mask[:, :95].max() == 0 and mask[:, 170:].max() == 0
    assert mask.sum() == pytest.approx(SETTINGS.mask.sum() / 4, rel=0.05)  # area scales with the face
    other = make_face(template * 0.5 + [10, 20])
    both = crop_masks((120, 240, 3), [face, other], SETTINGS)
    assert both.sum() == pytest.approx(2 * mask.sum(), rel=0.01)
    assert crop_masks((120, 240, 3), [], SETTINGS).max() == 0


def test_an_unchanged_clip_has_flicker_ratio_one_and_mouth_correlation_one(tmp_path, models):
    clip = make_clip(tmp_path / "clip.mp4", frames=8, audio=False)
    measures = measure_clip(clip, clip, *models, SETTINGS)
    assert measures.flicker.frames == 8 and measures.flicker.input > 0 and measures.flicker.ratio == 1.0
    assert np.isfinite(measures.mouth_input).all() and measures.mouth_input.shape == (8,)
    assert measures.mouth_correlation == pytest.approx(1.0, abs=1e-9)
    faceless = make_clip(tmp_path / "none.mp4", frames=4, face=False, audio=False)
    empty = measure_clip(faceless, faceless, *models, SETTINGS)
    assert empty.flicker.ratio is None and empty.mouth_correlation is None and np.isnan(empty.mouth_input).all()


def test_a_clip_and_a_shorter_output_do_not_compare(tmp_path, models):
    long, short = make_clip(tmp_path / "a.mp4", frames=6, audio=False), make_clip(tmp_path / "b.mp4", frames=4)
    with pytest.raises(EvaluateError, match="frame count differs"):
        measure_clip(long, short, *models, SETTINGS)


def test_the_mouth_of_a_real_talking_face_opens_and_closes(shared_dir, tmp_path, models):
    frames = [f.image for f in itertools.islice(decode_video(shared_dir / "media/video/talk1.mp4"), 40)]
    clip = write_video(tmp_path / "talk.mp4", frames)
    measures = measure_clip(clip, clip, *models, ClipSettings(TrackerConfig(), 256, build_face_mask(256)))
    opening = measures.mouth_input
    assert np.isfinite(opening).all() and 0.0 <= opening.min() and opening.max() - opening.min() > 0.03
    assert measures.mouth_correlation == pytest.approx(1.0, abs=1e-9)
    shut = opening.copy()
    shut[:] = opening.min()  # an output whose mouth stays shut does not correlate
    assert pearson(opening, shut) is None


def test_evaluate_video_runs_process_and_reports_each_clip(tmp_path, weights):
    clips = [make_clip(tmp_path / "one.mp4", frames=8), make_clip(tmp_path / "two.mp4", frames=6, audio=False)]
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate-video", *map(str, clips), "-e", "happy", "--weights",
                                      str(weights["identity"]), "--crf", "8", "--preset", "ultrafast",
                                      "--crop-size", "128", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["process"]["expression"] == "happy" and len(metrics["clips"]) == 2
    one = metrics["clips"][0]
    assert one["frames"] == 8 and one["faces_edited"] == 8 and Path(one["output"]) == out / "clips" / "one_happy.mp4"
    # an identity generator changes nothing: only the re-encoding and the blend's rounding differ from the input
    assert one["flicker"]["ratio"] == pytest.approx(1.0, abs=0.1) and one["mouth"]["frames"] == 8
    assert one["mouth"]["output_mean"] == pytest.approx(one["mouth"]["input_mean"], rel=0.05)
    assert metrics["clips"][1]["frames"] == 6 and (out / "clips" / "two_happy.mp4").is_file()
    report = (out / "report.md").read_text()
    assert "| one.mp4 | 8 | 8 |" in report and "mouth opening r" in report
    assert "one.mp4: flicker" in result.output


def test_evaluate_video_refuses_a_photo(tmp_path, weights):
    photo = tmp_path / "face.png"
    photo.write_bytes(b"")
    result = CliRunner().invoke(cli, ["evaluate-video", str(photo), "-e", "happy", "--weights",
                                      str(weights["identity"]), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and f"{photo}: not a video clip" in result.output


def test_a_failed_evaluate_video_leaves_no_empty_folder(weights, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "reports" / "video"
    result = CliRunner().invoke(cli, ["evaluate-video", str(bad), "-e", "sad", "--weights", str(weights["identity"]),
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {bad}: ")
    assert not (tmp_path / "reports").exists()
