"""pipeline.video.encode: real round trips through PyAV files made here (timing, rotation, colour, audio), and
failures that must leave no file behind."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest

from patterns import FAST, PATCHES_BGR, audio_packets, even_pts, make_video, pass_through, vfr_pts
from pipeline.errors import OutputError
from pipeline.types import StreamInfo
from pipeline.video.codecs import EncoderConfig
from pipeline.video.decode import decode_video, rotate_upright
from pipeline.video.encode import encode_video, last_duration
from pipeline.video.probe import probe_video


def test_last_duration_reaches_the_source_end_only_when_near():
    info = StreamInfo(Path("x.mp4"), "mp4", 2, 2, 3, Fraction(30), Fraction(1, 30), 0.0, 0.1, "h264", "yuv420p", 8)
    assert last_duration(2, info, 1) == 1
    info_long = replace(info, duration=10.0)
    assert last_duration(2, info_long, 1) == 1  # a partial run: one frame, not 10 s


def decoded_times(path: Path) -> tuple[list[int], list[float]]:
    """pts and seconds of every decoded frame (no pixel conversion, so long clips stay cheap)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pts = [frame.pts for frame in container.decode(stream)]
        return pts, [float(p * stream.time_base) for p in pts]


def assert_same_timing(source: Path, output: Path, exact_pts: bool = True, compare: int = 8) -> None:
    before, after = probe_video(source), probe_video(output)
    (pts_in, times_in), (pts_out, times_out) = decoded_times(source), decoded_times(output)
    assert len(pts_out) == len(pts_in)
    if exact_pts:
        assert pts_out == pts_in
        assert after.time_base == before.time_base and after.fps == before.fps
        assert after.duration == pytest.approx(before.duration, abs=1e-6)
    else:  # Matroska/WebM store milliseconds and shift all streams together past the AAC priming (negative) start
        assert np.allclose(np.subtract(times_out, times_out[0]), np.subtract(times_in, times_in[0]), atol=0.0011)
    assert (after.width, after.height, after.rotation) == (before.width, before.height, before.rotation)
    assert after.display_matrix == before.display_matrix
    for a, b in zip(islice(decode_video(source), compare), islice(decode_video(output), compare)):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 3.0  # same colours, same orientation


@pytest.mark.parametrize(("case", "make"), [
    ("22.13fps_rot90", dict(rotation=90)),
    ("odd_vfr_rot-90", dict(width=65, height=49, pix_fmt="yuv444p", pts=vfr_pts(9), rotation=-90)),
    ("10bit_untagged", dict(pix_fmt="yuv420p10le", tagged=False)),
])
def test_round_trip_keeps_timing_rotation_colour_and_audio(tmp_path, case, make):
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(source, **make)
    summary = pass_through(source, output)
    assert summary.frames == probe_video(source).frames and summary.audio_copied == 1
    assert_same_timing(source, output)
    before, after = probe_video(source), probe_video(output)
    tags = ("color_range", "colorspace", "color_primaries", "color_trc")
    assert [getattr(after, t) for t in tags] == [getattr(before, t) for t in tags]
    (codec_in, count_in, seconds_in), = audio_packets(source)
    (codec_out, count_out, seconds_out), = audio_packets(output)
    assert (codec_out, count_out) == (codec_in, count_in)  # copied packet-for-packet
    assert abs(seconds_out - seconds_in) <= 0.05


@pytest.mark.parametrize(("suffix", "audio_codec", "exact"), [(".mov", "aac", True), (".mkv", "aac", False)])
def test_other_containers_copy_audio(tmp_path, suffix, audio_codec, exact):
    source, output = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    make_video(source, rotation=90)
    assert pass_through(source, output).audio_copied == 1
    assert_same_timing(source, output, exact_pts=exact)
    assert [a.codec for a in probe_video(output).audio] == [audio_codec]


def test_webm_reencodes_video_and_audio_with_warnings(tmp_path, caplog):
    source, output = tmp_path / "in.mp4", tmp_path / "out.webm"
    make_video(source, width=65, height=49, pix_fmt="yuv444p", rotation=90)
    with caplog.at_level(logging.WARNING, logger="pipeline.video"):
        summary = pass_through(source, output)
    assert (summary.codec, summary.audio_copied, summary.audio_reencoded) == ("libvpx-vp9", 0, 1)
    assert "re-encoding it with libopus" in caplog.text and "encoding video with libvpx-vp9" in caplog.text
    assert_same_timing(source, output, exact_pts=False)
    (codec, _, seconds_out), = audio_packets(output)
    (_, _, seconds_in), = audio_packets(source)
    assert codec == "opus" and abs(seconds_out - seconds_in) <= 0.05


def audio_start(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(next(container.decode(audio=0)).time)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_late_audio_stays_in_sync(tmp_path, suffix):
    """Audio that starts 0.4 s after the video keeps that offset, copied or re-encoded."""
    source, output = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    make_video(source, pts=even_pts(20), audio_start=0.4)
    assert audio_start(source) == pytest.approx(0.4, abs=0.03)
    pass_through(source, output)
    assert audio_start(output) == pytest.approx(audio_start(source), abs=0.03)


def test_colour_patches_survive_bt709_round_trip(tmp_path):
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(source, width=96, height=32, pix_fmt="yuv444p", audio=False)
    frames = list(decode_video(source))
    encode_video(frames, source, output, EncoderConfig(crf=0, preset="ultrafast", pix_fmt="yuv444p"))
    for original, result in zip(frames, decode_video(output)):
        centres = [(8, 16 * k + 8) for k in range(len(PATCHES_BGR))]
        for y, x in centres:
            assert np.abs(original.image[y, x].astype(int) - result.image[y, x].astype(int)).max() <= 2


def test_audio_is_interleaved_not_appended(tmp_path):
    """Audio packets are muxed as the video advances, so they sit between video packets in the file."""
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(source, pts=even_pts(60))
    pass_through(source, output)
    with av.open(str(output)) as container:
        video_pos = sorted(e.pos for e in container.streams.video[0].index_entries)
        audio_pos = sorted(e.pos for e in container.streams.audio[0].index_entries)
    assert audio_pos[0] < video_pos[-1] and video_pos[0] < audio_pos[-1]
    assert audio_pos[len(audio_pos) // 2] < video_pos[-1]


def failing_frames(frames, after: int, error: BaseException):
    for frame in frames:
        if frame.index == after:
            raise error
        yield frame


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_file(tmp_path, error):
    source, output = tmp_path / "in.mp4", tmp_path / "out" / "result.mp4"
    make_video(source, pts=even_pts(12))
    with pytest.raises(type(error)):
        encode_video(failing_frames(decode_video(source), 5, error), source, output, FAST)
    assert not output.exists()
    assert os.listdir(output.parent) == []  # the temp file is gone too


def test_failure_keeps_a_previous_output_intact(tmp_path):
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(source)
    output.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        encode_video(failing_frames(decode_video(source), 3, RuntimeError("boom")), source, output, FAST)
    assert output.read_bytes() == b"previous result"


def test_refuses_to_overwrite_the_input(tmp_path):
    source = tmp_path / "in.mp4"
    make_video(source, audio=False)
    before = source.read_bytes()
    alias = tmp_path / "sub" / ".." / "in.mp4"
    (tmp_path / "sub").mkdir()
    for output in (source, alias):
        with pytest.raises(OutputError, match="output is the input file"):
            encode_video(decode_video(source), source, output, FAST)
    assert source.read_bytes() == before


def test_refuses_unknown_extension_and_unwritable_folder(tmp_path):
    source = tmp_path / "in.mp4"
    make_video(source, audio=False)
    with pytest.raises(OutputError, match=r"out\.avi: unknown video extension"):
        encode_video(decode_video(source), source, tmp_path / "out.avi", FAST)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        encode_video(decode_video(source), source, blocker / "out.mp4", FAST)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_refuses_read_only_folder(tmp_path):
    source, folder = tmp_path / "in.mp4", tmp_path / "locked"
    make_video(source, audio=False)
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="permission denied"):
        encode_video(decode_video(source), source, folder / "out.mp4", FAST)


def test_refuses_folder_without_write_permission_even_as_root(tmp_path, monkeypatch):
    source = tmp_path / "in.mp4"
    make_video(source, audio=False)
    monkeypatch.setattr("pipeline.files.os.access", lambda path, mode: Path(path) != tmp_path / "locked")
    (tmp_path / "locked").mkdir()
    with pytest.raises(OutputError, match=r"cannot write into folder .*locked \(permission denied\)"):
        encode_video(decode_video(source), source, tmp_path / "locked" / "new" / "out.mp4", FAST)


def test_empty_frames_and_wrong_shapes_are_refused(tmp_path):
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(source, audio=False)
    with pytest.raises(OutputError, match="no video frames"):
        encode_video(iter(()), source, output, FAST)
    upright = (replace(f, image=rotate_upright(f.image, 90)) for f in decode_video(source))
    with pytest.raises(ValueError, match=r"frame 0: expected uint8 BGR of shape \(48, 64, 3\)"):
        encode_video(upright, source, output, FAST)
    assert not output.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["talk1.mp4", "d13.mp4"])
def test_shared_clip_pass_through(shared_dir, tmp_path, name):
    source = shared_dir / "media" / "video" / name
    output = tmp_path / name
    summary = pass_through(source, output)
    before, after = probe_video(source), probe_video(output)
    assert summary.frames == before.frames == after.frames
    assert_same_timing(source, output, compare=3)
    assert [a.codec for a in after.audio] == [a.codec for a in before.audio]
    for a, b in zip(before.audio, after.audio):
        assert abs(a.duration - b.duration) <= 0.05
