"""pipeline.batch: convert a folder (images and a video), the manifest, resume, and folder safety."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import face_frame, make_clip, portrait, psnr, tight_crop
from pipeline.batch import BatchError, convert_dir, summary_lines
from pipeline.batch_workers import discard_unreported
from pipeline.config import ProcessConfig, SynthesizerConfig
from pipeline.manifest import Source
from pipeline.video.codecs import EncoderConfig
from usgan.errors import UserError


def config_for(weights: Path) -> ProcessConfig:
    return ProcessConfig(synthesizer=SynthesizerConfig(weights=weights), progress=False, crop_size=64,
                         blend="feather", encoder=EncoderConfig(preset="ultrafast"))


def fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under folder: inputs must come out byte-identical and untouched."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(tmp_path) -> Path:
    """A tight face crop, a portrait in a subfolder, a face-less image, a corrupt JPEG, a clip and a text file."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "tight.jpg"), tight_crop())
    cv2.imwrite(str(folder / "sub" / "portrait.png"), portrait())
    cv2.imwrite(str(folder / "wall.png"), face_frame(96, 72, 0, face=False))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_clip(folder / "sub" / "clip.mp4", frames=4, width=160, height=120)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_convert_keeps_paths_records_statuses_and_resumes(weights, photos, tmp_path):
    before, out = fingerprints(photos), tmp_path / "out"
    summary = convert_dir(photos, out, config_for(weights["random"]), recursive=True)
    statuses = {r.source: r.status for r in summary.results}
    assert statuses == {"broken.jpg": "failed", "notes.txt": "skipped", "sub/clip.mp4": "done",
                        "sub/portrait.png": "done", "tight.jpg": "done", "wall.png": "done"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "manifest.json", "sub/clip.mp4", "sub/portrait.png", "tight.jpg", "wall.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["broken.jpg"]["status"] == "failed" and "broken.jpg" in manifest["files"]["broken.jpg"][
        "reason"] and "\n" not in manifest["files"]["broken.jpg"]["reason"]
    assert manifest["files"]["tight.jpg"]["faces"] == 1  # the tight crop is found (padded retry)
    assert "no face found" in manifest["files"]["wall.png"]["reason"]
    assert manifest["files"]["notes.txt"]["reason"] == "unsupported file type"  # every file of IN_DIR is accounted for
    assert "4 done, 1 skipped (0 already complete, 1 of an unsupported type), 1 failed" in summary_lines(summary)[0]
    assert any(line.startswith("failed: broken.jpg: ") for line in summary_lines(summary))
    assert np.abs(cv2.imread(str(out / "tight.jpg")).astype(int) - tight_crop()).mean() > 3.0

    again = convert_dir(photos, out, config_for(weights["random"]), recursive=True)
    assert {r.source: r.status for r in again.results} == {**statuses, "sub/clip.mp4": "skipped",
                                                           "sub/portrait.png": "skipped", "tight.jpg": "skipped",
                                                           "wall.png": "skipped"}
    assert "0 done, 5 skipped (4 already complete, 1 of an unsupported type)" in summary_lines(again)[0]
    os.utime(photos / "wall.png", ns=(1, 1))  # a changed input is done again
    (out / "tight.jpg").unlink()  # and so is a missing output
    third = {r.source: r.status for r in convert_dir(photos, out, config_for(weights["random"]), True).results}
    assert third["wall.png"] == third["tight.jpg"] == "done" and third["sub/portrait.png"] == "skipped"
    os.utime(photos / "wall.png", ns=before["wall.png"][1:] * 2)
    assert fingerprints(photos) == before


def test_other_settings_redo_the_files(weights, photos, tmp_path):
    out = tmp_path / "out"
    convert_dir(photos, out, config_for(weights["random"]))
    other = replace(config_for(weights["random"]), expression="sad")
    redone = {r.source: r.status for r in convert_dir(photos, out, other).results}
    assert redone == {"broken.jpg": "failed", "notes.txt": "skipped", "tight.jpg": "done", "wall.png": "done"}


def test_non_recursive_takes_only_the_top_level(weights, photos, tmp_path):
    summary = convert_dir(photos, photos / "edited", config_for(weights["identity"]))  # inside IN_DIR is fine here
    assert sorted(r.source for r in summary.results) == ["broken.jpg", "notes.txt", "tight.jpg", "wall.png"]


@pytest.mark.parametrize("where, recursive, message", [
    (".", False, "is the input folder"),
    ("edited", True, "inside the input folder"),
    ("notes.txt", False, "not a folder"),
    ("notes.txt/out", False, "not a folder"),
])
def test_refuses_unusable_output_folders(weights, photos, where, recursive, message):
    before = fingerprints(photos)
    with pytest.raises(UserError, match=message):
        convert_dir(photos, photos / where, config_for(weights["identity"]), recursive=recursive)
    assert fingerprints(photos) == before


def test_refuses_an_output_that_would_overwrite_an_input(weights, tmp_path):
    out = tmp_path / "out"
    (out / "in" / "in").mkdir(parents=True)
    cv2.imwrite(str(out / "in" / "a.png"), tight_crop())
    cv2.imwrite(str(out / "in" / "in" / "a.png"), tight_crop())  # its output would be out/in/a.png, an input
    with pytest.raises(BatchError, match="overwrite an input"):
        convert_dir(out / "in", out, config_for(weights["identity"]), recursive=True)


@pytest.mark.slow
def test_two_worker_processes_give_the_same_outputs(weights, photos, tmp_path):
    one = convert_dir(photos, tmp_path / "one", config_for(weights["random"]), recursive=True, jobs=1)
    two = convert_dir(photos, tmp_path / "two", config_for(weights["random"]), recursive=True, jobs=2)
    assert [(r.source, r.status) for r in one.results] == [(r.source, r.status) for r in two.results]
    for name in ("tight.jpg", "sub/portrait.png", "wall.png"):
        # Equal up to float rounding, not byte-equal: the workers batch the generator over other groups of photos
        # than jobs 1 does, and some CPUs round two batch sizes differently. A real difference (another face,
        # target or blend) is far below 50 dB.
        one_image = cv2.imread(str(tmp_path / "one" / name), cv2.IMREAD_UNCHANGED)
        two_image = cv2.imread(str(tmp_path / "two" / name), cv2.IMREAD_UNCHANGED)
        assert one_image.shape == two_image.shape and psnr(one_image, two_image) > 50, name


@pytest.mark.slow
def test_workers_that_cannot_load_the_models_fail_every_file_with_the_reason(weights, photos, tmp_path):
    """--jobs 1 stops with the error; worker processes record it on each file, as a resume needs."""
    config = config_for(weights["random"])
    config = replace(config, detector=replace(config.detector, model_pack="absent", model_root=str(tmp_path)))
    with pytest.raises(UserError, match="absent"):
        convert_dir(photos, tmp_path / "one", config, recursive=True)
    summary = convert_dir(photos, tmp_path / "two", config, recursive=True, jobs=2)
    failed = {result.source: result.reason for result in summary.failed}
    assert sorted(failed) == ["broken.jpg", "sub/clip.mp4", "sub/portrait.png", "tight.jpg", "wall.png"]
    assert all("absent" in reason for reason in failed.values())


def test_a_full_disk_under_the_manifest_is_one_error_naming_it(weights, tmp_path, monkeypatch):
    import pipeline.manifest

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("nothing to convert")
    monkeypatch.setattr(pipeline.manifest, "atomic_write_bytes", full_disk)
    with pytest.raises(UserError, match=r"manifest\.json: cannot write it: no space left on the device; .* free some "
                                       r"space and run the same command again"):
        convert_dir(tmp_path / "in", tmp_path / "out", config_for(weights["identity"]))
    assert not (tmp_path / "out").exists()  # the folder this run created, left empty, is removed


def test_outputs_written_while_stopping_but_not_reported_are_removed(tmp_path):
    """After Ctrl-C the manifest must be true to the disk: an output a worker renamed into place but could not
    report goes; reported outputs and outputs older than the run stay."""
    out = tmp_path / "out"
    out.mkdir()
    names = ("reported.png", "unreported.png", "older.png")
    for name in names:
        (out / name).write_bytes(b"x")
    os.utime(out / "older.png", (1_000_000, 1_000_000))
    todo = [Source(tmp_path / name, name, 1, 0) for name in names]
    discard_unreported(todo, {"reported.png"}, out, since=2_000_000)
    assert sorted(p.name for p in out.iterdir()) == ["older.png", "reported.png"]

