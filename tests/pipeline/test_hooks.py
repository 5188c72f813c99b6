"""RunHooks: a video's frames and convert's files are reported as they finish, and cancelling stops the run with
no half-written output (convert keeps what finished, in its manifest)."""

from __future__ import annotations

import threading

import pytest

from clips import leftovers, make_clip, process_config, tight_crop
from pipeline.batch import convert_dir
from pipeline.hooks import RunCancelled, RunHooks
from pipeline.manifest import read_manifest
from pipeline.process import process_file


def test_advance_reports_then_raises_once_cancelled():
    seen = []
    hooks = RunHooks(lambda done, total: seen.append((done, total)))
    hooks.advance(1, 3)
    hooks.cancel.set()
    with pytest.raises(RunCancelled):
        hooks.advance(2, 3)
    assert seen == [(1, 3)]


def test_a_video_reports_every_frame_encoded(tmp_path, weights):
    clip = make_clip(tmp_path / "clip.mp4", frames=6)
    seen = []
    result = process_file(clip, tmp_path / "out.mp4", process_config(weights["random"]),
                          hooks=RunHooks(lambda done, total: seen.append((done, total))))
    assert result.frames == 6 and seen == [(done, 6) for done in range(1, 7)]


def test_cancelling_a_video_leaves_no_file(tmp_path, weights):
    clip = make_clip(tmp_path / "clip.mp4", frames=12)
    hooks = RunHooks(lambda done, total: hooks.cancel.set() if done == 3 else None)
    with pytest.raises(RunCancelled):
        process_file(clip, tmp_path / "out" / "clip_sad.mp4", process_config(weights["random"]), hooks=hooks)
    assert not (tmp_path / "out" / "clip_sad.mp4").exists() and leftovers(tmp_path / "out") == []
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("usgan-")]


def test_cancelling_convert_keeps_the_finished_files_in_the_manifest(tmp_path, weights):
    import cv2

    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(source / name), tight_crop())
    hooks = RunHooks(lambda done, total: hooks.cancel.set())
    with pytest.raises(RunCancelled):
        convert_dir(source, tmp_path / "out", process_config(weights["random"]), hooks=hooks)
    finished = [entry.source for entry in read_manifest(tmp_path / "out" / "manifest.json").values()
                if entry.status == "done"]
    assert 1 <= len(finished) < 3 and all((tmp_path / "out" / name).is_file() for name in finished)
    resumed = convert_dir(source, tmp_path / "out", process_config(weights["random"]))
    assert resumed.counts["complete"] == len(finished) and resumed.counts["done"] == 3 - len(finished)
