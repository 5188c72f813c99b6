"""`process` and `convert` through the real CLI: bad inputs, Ctrl-C, and end to end on the shared clips."""

from __future__ import annotations

import os
import re
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli as cli_module
import pipeline.config
from clips import face_frame, leftovers, make_clip, portrait, psnr
from pipeline.faces.detector import FaceDetector
from pipeline.video.probe import probe_video
from usgan.errors import UserError

TRACEBACK = "Traceback"


def invoke(*args: object):
    """Run the real CLI in-process; returns click's Result (stdout and stderr together in .output)."""
    return CliRunner().invoke(cli_module.cli, [str(a) for a in args])


def process(source: Path, output: Path, weights: Path, *extra: object):
    return invoke("process", source, "-e", "happy", "--weights", weights, "-o", output, "--no-progress",
                  "--preset", "ultrafast", *extra)


def error_line(result) -> str:
    """The CLI's single error line; fails the test on a traceback or anything but one line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert TRACEBACK not in result.output and len(lines) == 1, result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- bad files made here


def huge_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header claims side x side pixels (the size check must refuse it before decoding)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated_mp4(path: Path) -> Path:
    make_clip(path, frames=20)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    return path


BAD_FILES = {
    "missing": (lambda d: d / "missing.mp4", "no such file"),
    "zero_bytes": (lambda d: (d / "empty.mp4").touch() or d / "empty.mp4", "empty"),
    "truncated": (lambda d: truncated_mp4(d / "cut.mp4"), "damaged/truncated"),
    "text_as_mp4": (lambda d: (d / "notes.mp4").write_text("hello\n" * 50) and d / "notes.mp4",
                    "not a readable video"),
    "huge_image": (lambda d: huge_png(d / "huge.png"), "too large"),
    "corrupt_jpeg": (lambda d: (d / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage") and d / "bad.jpg",
                     "not a readable image"),
    "unknown_type": (lambda d: (d / "clip.xyz").write_text("x") and d / "clip.xyz", "unsupported file type"),
    "folder": (lambda d: (d / "clips.mp4").mkdir() or d / "clips.mp4", "not a regular file"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_input_is_one_line_naming_the_file(weights, tmp_path, kind):
    make, message = BAD_FILES[kind]
    source = make(tmp_path)
    before = snapshot(tmp_path)
    output = tmp_path / f"out{source.suffix}"
    result = process(source, output, weights["identity"])
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: ") and str(source) in line and message in line
    assert not output.exists() and leftovers(tmp_path) == [] and snapshot(tmp_path) == before


@pytest.mark.parametrize("target, message", [
    (lambda d, s: s, "output is the input file"),
    (lambda d, s: d / "notes.txt" / "out.mp4", "not a folder"),
    (lambda d, s: d / "out.avi", "unknown video extension"),
    (lambda d, s: d / "folder", "is a folder"),
])
def test_bad_output_is_one_line_and_the_input_stays(weights, tmp_path, target, message):
    source = make_clip(tmp_path / "in.mp4", frames=3)
    (tmp_path / "notes.txt").write_text("a regular file")
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    result = process(source, target(tmp_path, source), weights["identity"])
    assert result.exit_code == 1 and message in error_line(result)
    assert snapshot(tmp_path) == before


def test_unwritable_folder_is_refused(weights, tmp_path, monkeypatch):
    """Root ignores chmod, so the permission check itself is made to say no."""
    source = make_clip(tmp_path / "in.mp4", frames=3)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real_access(p, mode, **k))
    result = process(source, locked / "out.mp4", weights["identity"])
    assert result.exit_code == 1 and "permission denied" in error_line(result)


def test_missing_default_weights_says_to_pass_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.config, "DEFAULT_WEIGHTS", tmp_path / "weights" / "usgan_tfeid.safetensors")
    source = make_clip(tmp_path / "in.mp4", frames=2)
    result = invoke("process", source, "-e", "sad")
    assert result.exit_code == 1
    assert "default weights missing from this checkout: pass --weights W.safetensors" in error_line(result)
    assert not (tmp_path / "in_sad.mp4").exists()


def test_bad_expression_is_one_line(weights, tmp_path):
    source = make_clip(tmp_path / "in.mp4", frames=2)
    result = process(source, tmp_path / "o.mp4", weights["identity"], "-e", "grumpy")
    assert result.exit_code == 1 and "unknown expression 'grumpy'" in error_line(result)


# ---------------------------------------------------------------- inputs that must just work


@pytest.mark.parametrize("kind", ["no_audio", "odd_size", "ten_bit", "no_faces"])
def test_unusual_videos_pass_through_correctly(weights, tmp_path, kind, caplog):
    options = {"no_audio": {"audio": False}, "odd_size": {"width": 241, "height": 181, "pix_fmt": "yuv444p"},
               "ten_bit": {"pix_fmt": "yuv420p10le"}, "no_faces": {"face": False}}[kind]
    source = make_clip(tmp_path / "in.mp4", frames=5, **options)
    output = tmp_path / "out.mp4"
    result = process(source, output, weights["random"])
    assert result.exit_code == 0, result.output
    assert TRACEBACK not in result.output and re.search(r"5 frames, \d face\(s\) edited", result.output)
    before, after = probe_video(source), probe_video(output)
    assert (after.width, after.height, after.frames) == (before.width, before.height, 5)
    assert len(after.audio) == len(before.audio)
    if kind == "no_faces":
        assert "no face found" in caplog.text and "0 face(s) edited" in result.output
    else:
        assert "5 face(s) edited" in result.output


def grey(d: Path) -> Path:
    Image.fromarray(cv2.cvtColor(portrait(), cv2.COLOR_BGR2GRAY)).save(d / "grey.png")
    return d / "grey.png"


def rgba(d: Path) -> Path:
    rgb = cv2.cvtColor(portrait(), cv2.COLOR_BGR2RGB)
    alpha = np.tile(np.linspace(60, 255, rgb.shape[1], dtype=np.uint8), (rgb.shape[0], 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(d / "rgba.png")
    return d / "rgba.png"


def sixteen_bit(d: Path) -> Path:
    values = cv2.cvtColor(portrait(), cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    Image.fromarray(values).save(d / "deep.png")
    return d / "deep.png"


def cmyk(d: Path) -> Path:
    Image.fromarray(cv2.cvtColor(portrait(), cv2.COLOR_BGR2RGB)).convert("CMYK").save(d / "print.jpg")
    return d / "print.jpg"


@pytest.mark.parametrize("make, mode", [(grey, "L"), (rgba, "RGBA"), (sixteen_bit, "L"), (cmyk, "RGB")])
def test_image_modes_are_edited_and_written_back(weights, tmp_path, make, mode):
    source = make(tmp_path)
    before = source.read_bytes()
    result = invoke("process", source, "-e", "sad", "--weights", weights["random"])
    assert result.exit_code == 0, result.output
    assert "1 face(s) edited" in result.output
    output = source.with_name(f"{source.stem}_sad{source.suffix}")
    with Image.open(source) as original, Image.open(output) as written:
        assert written.mode == mode and written.size == original.size
        if mode == "RGBA":
            np.testing.assert_array_equal(np.asarray(written)[..., 3], np.asarray(original)[..., 3])
    assert source.read_bytes() == before


def test_convert_exits_non_zero_when_a_file_failed(weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), face_frame(96, 72, 0))
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    result = invoke("convert", folder, tmp_path / "out", "-e", "sad", "--weights", weights["identity"])
    assert result.exit_code == 1 and TRACEBACK not in result.output
    assert "1 done" in result.output and "1 failed" in result.output and "failed: b.jpg: " in result.output
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "manifest.json").is_file()


# ---------------------------------------------------------------- end to end on the shared clips


def sample_frames(path: Path, indices: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """(frame count, {index: BGR frame}) decoding once with plain PyAV and keeping only the asked frames."""
    kept, count = {}, 0
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            if count - 1 in indices:
                kept[count - 1] = frame.to_ndarray(format="bgr24")
    return count, kept


def face_split(frame: np.ndarray, detector: FaceDetector) -> tuple[np.ndarray, np.ndarray]:
    """Masks: the face's centre (must change) and everything outside its box grown by 40% (must not)."""
    x1, y1, x2, y2 = max(detector.detect_faces(frame), key=lambda f: f.score).bbox
    w, h = x2 - x1, y2 - y1
    inside = np.zeros(frame.shape[:2], bool)
    inside[int(y1 + 0.25 * h):int(y2 - 0.15 * h), int(x1 + 0.25 * w):int(x2 - 0.25 * w)] = True
    outside = np.ones(frame.shape[:2], bool)
    outside[max(0, int(y1 - 0.4 * h)):int(y2 + 0.4 * h), max(0, int(x1 - 0.4 * w)):int(x2 + 0.4 * w)] = False
    return inside, outside


@pytest.mark.slow
@pytest.mark.parametrize("name, blend", [("d18.mp4", "seamless"), ("talk1.mp4", "feather"), ("d13.mp4", "seamless")])
def test_shared_clip_end_to_end(shared_dir, weights, tmp_path, name, blend):
    source = shared_dir / "media" / "video" / name
    output = tmp_path / name
    result = invoke("process", source, "-e", "happy", "--weights", weights["random"], "-o", output,
                    "--blend", blend, "--no-progress")
    assert result.exit_code == 0, result.output
    before, after = probe_video(source), probe_video(output)
    frame_s = 1 / before.fps
    assert abs(Fraction(after.fps) - Fraction(before.fps)) < Fraction(1, 100)
    assert abs(after.duration - before.duration) <= frame_s
    assert (after.width, after.height, after.rotation) == (before.width, before.height, before.rotation)
    assert len(after.audio) == len(before.audio)
    for a, b in zip(before.audio, after.audio):
        assert abs(a.duration - b.duration) <= 0.05
    count = before.frames
    picks = {0, count // 2, count - 1}
    count_in, frames_in = sample_frames(source, picks)
    count_out, frames_out = sample_frames(output, picks)
    assert count_in == count_out == count and f"{count} frames" in result.output
    detector = FaceDetector()
    for index in sorted(picks):
        inside, outside = face_split(frames_in[index], detector)
        changed = np.abs(frames_out[index][inside].astype(int) - frames_in[index][inside]).mean()
        assert changed > 5.0, (index, changed)
        assert psnr(frames_out[index][outside], frames_in[index][outside]) >= 35.0


class Captured(UserError):
    """Raised by a stand-in for the pipeline once it has recorded the config the CLI built."""


def capture_config(seen: list, position: int):
    def stand_in(*args, **kwargs):
        seen.append(args[position])
        raise Captured("config captured")
    return stand_in


def test_fast_preset_and_precision_reach_the_config(weights, tmp_path, monkeypatch):
    """--fast loads configs/pipeline/fast.yaml under the explicit options; process and convert both take it."""
    import pipeline.batch
    import pipeline.process

    seen: list = []
    monkeypatch.setattr(pipeline.process, "process_file", capture_config(seen, 2))
    monkeypatch.setattr(pipeline.batch, "convert_dir", capture_config(seen, 2))
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), face_frame(120, 90, 0))
    invoke("process", source, "-e", "sad", "--weights", weights["random"], "--fast", "--detect-every", "5")
    invoke("process", source, "-e", "sad", "--weights", weights["random"], "--precision", "bf16")
    invoke("convert", tmp_path, tmp_path / "out", "-e", "sad", "--weights", weights["random"], "--fast")
    fast, bf16, converted = seen
    assert (fast.tracker.detect_every, fast.detector.input_size, fast.synthesizer.precision) == (5, 320, "auto")
    assert (bf16.synthesizer.precision, bf16.detector.input_size) == ("bf16", 640)
    assert converted.clone_scale == 0.25 and converted.tracker.detect_every == 3
