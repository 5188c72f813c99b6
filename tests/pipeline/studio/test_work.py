"""The studio's work goes through the CLI's own checks and stages: the same messages, the same edited frames."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clips import PORTRAIT, decode_frames, make_clip
from pipeline.config import DEFAULT_CONFIG
from pipeline.errors import InputError
from pipeline.hooks import RunCancelled, RunHooks
from pipeline.schedule import ScheduleError, parse_schedule
from pipeline.studio.settings import StudioSettings
from pipeline.studio.work import Studio, check_upload, error_line, read_frame


@pytest.fixture
def studio(tmp_path) -> Studio:
    return Studio(tmp_path / "renders")


def cli_error(path: Path, weights: Path) -> str:
    result = CliRunner().invoke(cli.cli, ["process", str(path), "-e", "sad", "--weights", str(weights)])
    assert result.exit_code == 1
    return result.output.strip()


@pytest.mark.parametrize("name, content", [("notes.jpg", b"not a photo\n"), ("notes.mp4", b"not a video\n"),
                                           ("notes.txt", b"text\n"), ("empty.png", b"")])
def test_a_bad_upload_gets_the_cli_message(tmp_path, weights, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        check_upload(path)
    assert error_line(caught.value) == cli_error(path, weights["random"])


def test_uploads_are_read_as_process_reads_them(tmp_path):
    photo = check_upload(PORTRAIT)
    assert photo.kind == "image" and photo.image.shape == (287, 233, 3) and photo.describe().endswith("233x287")
    video = check_upload(make_clip(tmp_path / "clip.mp4", frames=5))
    assert video.kind == "video" and video.info.frames == 5 and "5 frames" in video.describe()


def test_a_bad_schedule_fails_before_any_model_loads(studio):
    settings = StudioSettings(schedule="sad@3-1")
    with pytest.raises(ScheduleError) as caught:
        studio.models(studio.config(settings, "video"))
    with pytest.raises(ScheduleError, match=re.escape(str(caught.value))):
        parse_schedule("sad@3-1")
    assert studio.loaded is None


def test_models_load_once_per_generator_setting(studio, weights):
    settings = StudioSettings(expression="sad", weights=str(weights["random"]))
    first = studio.models(studio.config(settings, "image"))
    second = studio.models(studio.config(replace(settings, expression="happy", intensity=0.5), "image"))
    assert second.synthesizer is first.synthesizer
    assert second.schedule.mix_at(0.0) == (("happy", 1.0),) and first.schedule.mix_at(0.0) == (("sad", 1.0),)
    third = studio.models(studio.config(replace(settings, weights=str(weights["identity"])), "image"))
    assert third.synthesizer is not first.synthesizer


def test_a_frame_preview_is_the_frame_the_render_writes(weights, tmp_path):
    config = tmp_path / "lossless.yaml"  # the config file as --config gives it: x264 lossless, to compare pixels
    config.write_text(DEFAULT_CONFIG.read_text().replace("crf: 18", "crf: 0"))
    studio = Studio(tmp_path / "renders", config)
    clip = check_upload(make_clip(tmp_path / "clip.mp4", frames=4))
    settings = StudioSettings(expression="sad", weights=str(weights["random"]))
    before, after = studio.preview_frame(clip, settings, 0)
    assert np.array_equal(before, read_frame(clip.path, clip.info, 0).image) and not np.array_equal(before, after)
    result = studio.render(clip, settings, RunHooks())
    luma = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(int)  # 4:2:0 keeps luma whole, chroma halved
            for image in (decode_frames(result.output)[0], after, before)]
    edited = np.abs(luma[1] - luma[2]) > 8  # what the edit changed clearly
    assert result.frames == 4 and edited.sum() > 100
    to_preview, to_input = (np.abs(luma[0] - image)[edited].mean() for image in luma[1:])
    assert to_preview < to_input / 3, (to_preview, to_input)


def test_a_photo_preview_is_process_output(studio, weights, tmp_path):
    settings = StudioSettings(expression="sad", weights=str(weights["random"]))
    result = studio.preview_photo(check_upload(PORTRAIT), settings, tmp_path)
    cli_output = tmp_path / "cli.png"
    CliRunner().invoke(cli.cli, ["process", str(PORTRAIT), "-e", "sad", "--weights", str(weights["random"]), "-o",
                                 str(cli_output)], catch_exceptions=False)
    assert np.array_equal(cv2.imread(str(result.output)), cv2.imread(str(cli_output)))


def test_a_cancelled_render_leaves_nothing(studio, weights, tmp_path):
    clip = check_upload(make_clip(tmp_path / "clip.mp4", frames=12))
    hooks = RunHooks(lambda done, total: hooks.cancel.set())
    with pytest.raises(RunCancelled):
        studio.render(clip, StudioSettings(weights=str(weights["random"])), hooks)
    assert not any(path.is_file() for path in studio.out_dir.rglob("*"))


def test_frames_past_the_end_are_an_input_error(tmp_path):
    clip = check_upload(make_clip(tmp_path / "clip.mp4", frames=3))
    with pytest.raises(InputError, match="has no frame 3"):
        read_frame(clip.path, clip.info, 3)
