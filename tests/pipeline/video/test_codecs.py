"""pipeline.video.codecs: the encoder's choices, pure and without hardware; what the output keeps of the input's
pixel format, checked on real files."""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from patterns import TB_90K, even_pts, make_video, pass_through
from pipeline.errors import OutputError
from pipeline.types import VideoFrame
from pipeline.video.codecs import (
    EncoderConfig, audio_action, build_encoder_options, choose_encoder, choose_pix_fmt, codec_for_container,
    default_pix_fmt, is_video_path, next_pts, output_container, pix_fmt_loss, plan_encode,
)
from pipeline.video.probe import probe_video


@pytest.mark.parametrize(("cuda", "requested", "expected"), [
    (False, None, "libx264"), (True, None, "h264_nvenc"), (True, "libx264", "libx264"), (False, "libx265", "libx265"),
])
def test_choose_encoder(cuda, requested, expected):
    assert choose_encoder(cuda, requested) == expected


def test_choose_encoder_rejects_unknown():
    with pytest.raises(OutputError, match="unknown video encoder 'divx'"):
        choose_encoder(False, "divx")


@pytest.mark.parametrize(("codec", "b_frames", "expected"), [
    ("libx264", True, {"crf": "18", "preset": "veryfast"}),
    ("libx264", False, {"crf": "18", "preset": "veryfast", "bf": "0"}),
    ("h264_nvenc", True, {"preset": "p2", "tune": "hq", "rc": "vbr", "cq": "18", "b": "0"}),
    ("libvpx-vp9", True, {"crf": "18", "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}),
    ("libx265", True, {"crf": "18", "preset": "veryfast", "x265-params": "log-level=error"}),
])
def test_build_encoder_options(codec, b_frames, expected):
    assert build_encoder_options(codec, 18, "veryfast", b_frames) == expected


def test_build_encoder_options_rejects_unknown_preset():
    with pytest.raises(OutputError, match="preset 'warp'"):
        build_encoder_options("libx264", 18, "warp")


@pytest.mark.parametrize(("size", "requested", "expected"), [
    ((64, 48), None, "yuv420p"),
    ((65, 49), None, "yuv444p"),
    ((64, 49), "yuv420p10le", "yuv444p10le"),
    ((65, 48), "yuv422p", "yuv444p"),
    ((65, 49), "yuv444p", "yuv444p"),
    ((64, 48), "yuv444p", "yuv444p"),
])
def test_choose_pix_fmt(size, requested, expected):
    assert choose_pix_fmt(*size, requested) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("a.mp4", "mp4"), ("A.MOV", "mov"), ("a.mkv", "matroska"), ("a.webm", "webm"), ("a.m4v", "mp4"),
])
def test_output_container(name, expected):
    assert output_container(Path(name)) == expected


@pytest.mark.parametrize("name", ["a.avi", "a.gif", "a"])
def test_output_container_rejects_unknown_extension(name):
    with pytest.raises(OutputError, match=f"{name}: unknown video extension"):
        output_container(Path(name))


@pytest.mark.parametrize(("container", "codec", "expected"), [
    ("mp4", "aac", "copy"), ("mov", "aac", "copy"), ("matroska", "aac", "copy"), ("matroska", "pcm_s24le", "copy"),
    ("webm", "aac", "libopus"), ("webm", "opus", "copy"), ("mp4", "pcm_s16le", "aac"),
])
def test_audio_action(container, codec, expected):
    assert audio_action(container, codec) == expected


def test_codec_for_container_swaps_h264_for_vp9_in_webm():
    assert codec_for_container("libx264", "webm") == "libvpx-vp9"
    assert codec_for_container("libx264", "mp4") == "libx264"


def frame_at(pts, time_base=TB_90K, time=0.0, index=0):
    return VideoFrame(index, np.zeros((2, 2, 3), np.uint8), pts, time_base, time)


@pytest.mark.parametrize(("previous", "frame", "expected"), [
    (None, frame_at(450), 450),
    (450, frame_at(4517), 4517),
    (450, frame_at(None), 450 + 4067),  # missing pts: one frame later
    (None, frame_at(None, time=0.5), 45000),
    (4517, frame_at(4517), 4518),  # repeated pts: nudged, never dropped
    (None, frame_at(3, Fraction(1, 30)), 9000),  # rescaled into the writer's time base
])
def test_next_pts(previous, frame, expected):
    assert next_pts(previous, frame, TB_90K, 4067) == expected


@pytest.mark.parametrize(("name", "expected"), [("a.mp4", True), ("b.MOV", True), ("c.mkv", True), ("d.png", False)])
def test_is_video_path(name, expected):
    assert is_video_path(Path(name)) is expected


@pytest.mark.parametrize(("source", "codec", "expected"), [
    ("yuv420p", "libx264", "yuv420p"), ("yuv420p10le", "libx264", "yuv420p"), ("yuv444p", "libx264", "yuv444p"),
    ("yuvj444p", "libx265", "yuv444p"), ("rgb24", "libvpx-vp9", "yuv444p"), ("yuv444p", "h264_nvenc", "yuv420p"),
    ("gray", "libx264", "yuv420p"), ("yuv422p", "libx264", "yuv420p"),
])
def test_default_pix_fmt_keeps_full_colour_where_the_encoder_takes_it(source, codec, expected):
    assert default_pix_fmt(source, codec) == expected


@pytest.mark.parametrize(("source", "output", "lost"), [
    ("yuv420p", "yuv420p", None), ("yuvj420p", "yuv420p", None), ("gray", "yuv420p", None),
    ("yuv444p", "yuv444p", None), ("nv12", "yuv420p", None),
    ("yuv420p10le", "yuv420p", "10-bit samples become 8-bit"),
    ("yuv444p", "yuv420p", "4:4:4 colour becomes 4:2:0"),
    ("yuv422p10le", "yuv420p", "10-bit samples become 8-bit (frames are edited in 8 bits); 4:2:2 colour becomes 4:2:0"),
])
def test_pix_fmt_loss_names_what_the_output_drops(source, output, lost):
    text = pix_fmt_loss(source, output)
    assert (text is None) if lost is None else text.startswith(lost)


def test_ten_bit_input_is_written_8_bit_with_a_warning(tmp_path, caplog):
    source = tmp_path / "ten.mp4"
    make_video(source, pix_fmt="yuv420p10le", audio=False, pts=even_pts(3))
    with caplog.at_level(logging.WARNING, logger="pipeline.video"):
        summary = pass_through(source, tmp_path / "out.mp4")
    assert summary.pix_fmt == "yuv420p" and probe_video(tmp_path / "out.mp4").bit_depth == 8
    assert f"{source}: yuv420p10le input written as yuv420p: 10-bit samples become 8-bit" in caplog.text


def test_yuv444_input_stays_yuv444_without_a_warning(tmp_path, caplog):
    source = tmp_path / "full.mp4"
    make_video(source, pix_fmt="yuv444p", audio=False, pts=even_pts(3))
    with caplog.at_level(logging.WARNING, logger="pipeline.video"):
        pass_through(source, tmp_path / "out.mp4")
    assert probe_video(tmp_path / "out.mp4").pix_fmt == "yuv444p" and "input written as" not in caplog.text


def test_yuv444_input_through_an_encoder_without_444_is_a_warning(tmp_path, caplog):
    info = replace(probe_info(tmp_path), pix_fmt="yuv444p")
    with caplog.at_level(logging.WARNING, logger="pipeline.video"):
        plan = plan_encode(tmp_path / "out.mp4", info, EncoderConfig(codec="h264_nvenc"))
    assert plan.pix_fmt == "yuv420p" and "yuv444p input written as yuv420p: 4:4:4 colour becomes 4:2:0" in caplog.text


def probe_info(folder: Path):
    make_video(folder / "in.mp4", audio=False, pts=even_pts(2))
    return probe_video(folder / "in.mp4")
