"""pipeline.video.probe and pipeline.video.decode: stream info, streaming BGR frames, bad inputs, rotation."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from patterns import PATCHES_BGR, TB_90K, even_pts, make_video, pattern, vfr_pts, write_audio
from pipeline.errors import InputError
from pipeline.video.decode import decode_video, rotate_stored, rotate_upright
from pipeline.video.probe import probe_video


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
