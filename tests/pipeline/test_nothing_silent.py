"""Nothing is lost without a word: what reading, probing or converting leaves out is said in a warning or recorded
in convert's manifest with its reason."""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from clips import face_frame, portrait
from pipeline.batch import convert_dir, summary_lines
from pipeline.config import ProcessConfig, SynthesizerConfig
from pipeline.images import read_image
from pipeline.video.probe import probe_video

ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
              b"Style: Default,Arial,20\n\n[Events]\nFormat: Layer, Start, End, Style, Text\n")


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def sixteen_bit_png(folder: Path) -> Path:
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13)).save(folder / "deep.png")
    return folder / "deep.png"


def cmyk_jpeg(folder: Path) -> Path:
    Image.fromarray(np.full((48, 64, 3), (200, 120, 40), np.uint8)).convert("CMYK").save(folder / "print.jpg")
    return folder / "print.jpg"


@pytest.mark.parametrize("make, said", [(sixteen_bit_png, "16-bit image: edited and written with 8 bits"),
                                        (cmyk_jpeg, "CMYK image: edited and written as RGB")])
def test_reading_a_16_bit_or_cmyk_image_says_what_it_loses(tmp_path, caplog, make, said):
    path = make(tmp_path)
    read_image(path)
    assert warnings_of(caplog) == [f"{path}: {said}" + (" per channel" if "16-bit" in said else " (sRGB)")]


def clip_with_subtitles(path: Path, frames: int = 5) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 96, 72, "yuv420p"
        subtitle = container.add_stream("ass")
        subtitle.codec_context.subtitle_header = ASS_HEADER
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(face_frame(96, 72, index, face=False), format="bgr24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        packet = av.Packet(b"0,0,Default,,0,0,0,,hello")
        packet.stream, packet.pts, packet.dts, packet.duration = subtitle, 0, 0, 100
        packet.time_base = Fraction(1, 1000)
        container.mux(packet)
    return path


def test_subtitle_streams_left_out_are_named(tmp_path, caplog):
    path = clip_with_subtitles(tmp_path / "film.mkv")
    probe_video(path)
    assert f"{path}: 1 subtitle stream(s) are not carried to the output (video and audio are)" in warnings_of(caplog)


def test_a_schedule_on_a_photo_says_only_its_start_applies(weights, tmp_path, caplog):
    source = tmp_path / "face.png"
    cv2.imwrite(str(source), portrait())
    result = CliRunner().invoke(cli, ["process", str(source), "-e", "happy@0-3,sad@3-6", "--weights",
                                      str(weights["identity"]), "-o", str(tmp_path / "out.png"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{source}: a still image is one moment: only the schedule's expression at 0 s applies" \
        in warnings_of(caplog)


def test_export_to_a_name_without_onnx_says_so(weights, tmp_path, caplog):
    out = tmp_path / "generator.bin"
    result = CliRunner().invoke(cli, ["export", str(weights["identity"]), str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out}: an ONNX model written under a name that does not end in .onnx" in warnings_of(caplog)


def test_prepare_data_on_a_folder_without_images_says_so(tmp_path, caplog):
    from pipeline.evaluation.prepare import prepare_data

    (tmp_path / "empty").mkdir()
    prepare_data(tmp_path / "empty", tmp_path / "out")
    assert any("no labelled face images found" in message for message in warnings_of(caplog))


def test_convert_records_links_pipes_and_unreadable_folders_with_their_reason(weights, tmp_path, monkeypatch):
    photos = tmp_path / "in"
    (photos / "locked").mkdir(parents=True)
    cv2.imwrite(str(photos / "a.png"), face_frame(96, 72, 0))
    (photos / "gone.png").symlink_to(photos / "missing.png")
    (photos / "self.png").symlink_to(photos / "self.png")
    os.mkfifo(photos / "pipe.png")
    (photos / "locked" / "b.png").write_bytes((photos / "a.png").read_bytes())
    (photos / "locked").chmod(0)
    if os.geteuid() == 0:  # root reads any folder: refuse this one as the kernel would refuse another user
        scandir = os.scandir

        def refusing(path):
            if Path(path).name == "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return scandir(path)
        monkeypatch.setattr(os, "scandir", refusing)
    config = ProcessConfig(synthesizer=SynthesizerConfig(weights=weights["identity"]), progress=False, crop_size=64,
                           blend="feather")
    try:
        summary = convert_dir(photos, tmp_path / "out", config, recursive=True)
    finally:
        (photos / "locked").chmod(0o755)
    files = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    reasons = {name: (entry["status"], entry["reason"]) for name, entry in files.items()}
    assert reasons["a.png"][0] == "done"
    assert reasons["gone.png"] == ("skipped", "a broken link (its target is missing)")
    assert reasons["self.png"] == ("skipped", "a link that points back to itself")
    assert reasons["pipe.png"] == ("skipped", "not a regular file (a pipe, socket or device)")
    assert reasons["locked/"] == ("skipped", "an unreadable folder (permission denied): its files were not converted")
    assert "not a usable file or folder" in summary_lines(summary)[0]
