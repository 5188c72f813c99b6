"""pipeline.video: pure encoder choices, and real round trips through PyAV files generated here."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import InputError, OutputError
from pipeline.types import StreamInfo, VideoFrame
from pipeline.video import (
    EncoderConfig,
    audio_action,
    build_encoder_options,
    choose_encoder,
    choose_pix_fmt,
    codec_for_container,
    decode_video,
    encode_video,
    is_video_path,
    last_duration,
    next_pts,
    output_container,
    probe_video,
    rotate_stored,
    rotate_upright,
)

RATE_2213 = Fraction(2213, 100)
TB_90K = Fraction(1, 90000)
BT709, MPEG = 1, 1
# Saturated patches: a YUV matrix mix-up (BT.601 vs BT.709) moves these by 10+ levels.
PATCHES_BGR = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (40, 40, 40)]
FAST = EncoderConfig(preset="ultrafast")


def pattern(width: int, height: int, index: int) -> np.ndarray:
    """Colour patches in a row plus a moving grey bar, so frames differ and colours are checkable."""
    image = np.zeros((height, width, 3), np.uint8)
    step = max(1, width // len(PATCHES_BGR))
    for k, colour in enumerate(PATCHES_BGR):
        image[:, k * step:(k + 1) * step] = colour
    image[(index * 3) % height, :] = 200
    return image


def even_pts(count: int, rate: Fraction = RATE_2213, time_base: Fraction = TB_90K) -> list[int]:
    return [round(i / rate / time_base) for i in range(count)]


def vfr_pts(count: int, time_base: Fraction = TB_90K) -> list[int]:
    """Irregular gaps (30 fps and 15 fps mixed), like phone recordings."""
    gaps = [3000, 6000, 3000, 3000, 6000]
    return [sum(gaps[j % len(gaps)] for j in range(i)) + 450 for i in range(count)]


def write_audio(container, stream, seconds: float, start: float = 0.0) -> None:
    rate, offset = stream.sample_rate, round(start * stream.sample_rate)
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    for first in range(0, len(samples), 1024):
        chunk = samples[first:first + 1024]
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, offset + first
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_video(path: Path, width: int = 64, height: int = 48, pts: list[int] | None = None,
               time_base: Fraction = TB_90K, rotation: int | None = None, audio: bool = True,
               codec: str = "libx264", pix_fmt: str = "yuv420p", tagged: bool = True,
               options: dict[str, str] | None = None, audio_start: float = 0.0) -> list[int]:
    """A real little video (aac stereo audio when asked); returns the pts written."""
    pts = pts if pts is not None else even_pts(8, time_base=time_base)
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream(codec, rate=RATE_2213, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = video.codec_context.time_base = time_base
        if tagged:
            for name in ("color_range", "colorspace", "color_primaries", "color_trc"):
                setattr(video.codec_context, name, BT709)
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100, layout="stereo") if audio else None
        for index, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(pattern(width, height, index), format="bgr24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=BT709 if tagged else None,
                                   dst_color_range=MPEG if tagged else None)
            frame.pts, frame.time_base = value, time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            write_audio(container, sound, float((pts[-1] - pts[0]) * time_base) + 0.1, audio_start)
    return pts


def audio_packets(path: Path) -> list[tuple[str, int, Fraction]]:
    """(codec, packet count, duration in seconds) for each audio stream."""
    with av.open(str(path)) as container:
        result = []
        for stream in container.streams.audio:
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            end = max(p.pts + p.duration for p in packets)
            result.append((stream.codec_context.name, len(packets), (end - packets[0].pts) * stream.time_base))
        return result


def pass_through(source: Path, output: Path, config: EncoderConfig = FAST):
    return encode_video(decode_video(source), source, output, config, probe_video(source))


# --- pure choices ---


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


def test_last_duration_reaches_the_source_end_only_when_near():
    info = StreamInfo(Path("x.mp4"), "mp4", 2, 2, 3, Fraction(30), Fraction(1, 30), 0.0, 0.1, "h264", "yuv420p", 8)
    assert last_duration(2, info, 1) == 1
    info_long = replace(info, duration=10.0)
    assert last_duration(2, info_long, 1) == 1  # a partial run: one frame, not 10 s


@pytest.mark.parametrize(("rotation", "turns"), [(0, 0), (90, 1), (-90, 3), (180, 2), (270, 3)])
def test_rotate_upright_and_back(rotation, turns):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    upright = rotate_upright(stored, rotation)
    assert np.array_equal(upright, np.rot90(stored, turns))  # counter-clockwise, as the display matrix says
    assert upright.flags.c_contiguous
    assert np.array_equal(rotate_stored(upright, rotation), stored)


def test_rotate_upright_90_moves_top_right_to_top_left():
    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 2] = 255
    assert rotate_upright(stored, 90)[0, 0, 0] == 255


@pytest.mark.parametrize(("name", "expected"), [("a.mp4", True), ("b.MOV", True), ("c.mkv", True), ("d.png", False)])
def test_is_video_path(name, expected):
    assert is_video_path(Path(name)) is expected


# --- probe and decode ---


def test_probe_reads_everything(tmp_path):
    source = tmp_path / "phone.mp4"
    make_video(source, rotation=-90)
    info = probe_video(source)
    assert (info.width, info.height, info.frames, info.codec, info.pix_fmt, info.bit_depth) == (
        64, 48, 8, "h264", "yuv420p", 8)
    assert info.rotation == -90 and info.display_matrix is not None
    assert (info.color_range, info.colorspace, info.color_primaries, info.color_trc) == (1, 1, 1, 1)
    assert info.time_base == TB_90K and abs(float(info.fps) - 22.13) < 0.01
    assert [(a.codec, a.channels, a.sample_rate) for a in info.audio] == [("aac", 2, 44100)]
    assert not info.truncated


def test_decode_streams_bgr_frames_with_original_pts(tmp_path):
    source = tmp_path / "clip.mp4"
    pts = make_video(source, pts=vfr_pts(6), audio=False)
    frames = decode_video(source)
    assert inspect.isgenerator(frames)  # one frame at a time, not a list
    first = next(frames)
    assert first.image.shape == (48, 64, 3) and first.image.dtype == np.uint8
    assert np.abs(first.image[24, 2].astype(int) - PATCHES_BGR[0]).max() < 12  # BGR order, red patch
    rest = list(frames)
    assert [first.pts] + [f.pts for f in rest] == pts
    assert [f.index for f in rest] == list(range(1, 6))
    assert rest[-1].time == pytest.approx(float(pts[-1] * TB_90K))


@pytest.mark.parametrize(("codec", "pix_fmt"), [("libx264", "yuv420p10le"), ("libx265", "yuv420p10le")])
def test_decode_10_bit_to_bgr24(tmp_path, codec, pix_fmt):
    source = tmp_path / "ten.mp4"
    make_video(source, codec=codec, pix_fmt=pix_fmt, audio=False, pts=even_pts(3))
    assert probe_video(source).bit_depth == 10
    frames = list(decode_video(source))
    assert len(frames) == 3 and frames[0].image.dtype == np.uint8
    assert np.abs(frames[0].image[24, 2].astype(int) - PATCHES_BGR[0]).max() < 12


def bad_input(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "empty":
        path.touch()
    elif kind == "folder":
        path.mkdir()
    elif kind == "image":
        path = tmp_path / "still.png"
        av.VideoFrame.from_ndarray(pattern(8, 8, 0), format="bgr24").save(str(path))
    elif kind == "audio_only":
        with av.open(str(path), "w") as container:
            write_audio(container, container.add_stream("aac", rate=44100, layout="stereo"), 0.2)
    elif kind == "truncated_index_at_end":
        make_video(path, pts=even_pts(20))
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "no such file"), ("empty", "empty"), ("text", "not a readable video"), ("folder", "not a regular file"),
    ("image", "still image"), ("audio_only", "no video stream"), ("truncated_index_at_end", "damaged/truncated"),
])
def test_bad_input_is_a_one_line_input_error(tmp_path, kind, message):
    path = bad_input(tmp_path, kind)
    for read in (probe_video, lambda p: next(decode_video(p))):
        with pytest.raises(InputError, match=message) as caught:
            read(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_faststart_mp4_decodes_what_is_there(tmp_path, caplog):
    """Index-first MP4 cut short: the frames present are decoded, with a warning naming the file."""
    path = tmp_path / "cut.mp4"
    make_video(path, pts=even_pts(40), options={"movflags": "+faststart"})
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with caplog.at_level(logging.WARNING, logger="pipeline.video"):
        info = probe_video(path)
        frames = list(decode_video(path))
    assert info.truncated and info.frames == 40
    assert 5 < len(frames) < 40
    assert f"{path}: decoded {len(frames)} of the 40 frames" in caplog.text


# --- encode ---


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
    monkeypatch.setattr("pipeline.errors.os.access", lambda path, mode: Path(path) != tmp_path / "locked")
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


# --- the real clips in ../shared ---


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
