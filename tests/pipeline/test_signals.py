"""Ctrl-C and SIGTERM through the real CLI, as a terminal, a service manager or a cluster sends them: a clean stop,
exit 130 (143 for SIGTERM), one line, nothing half-written; later signals while stopping change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from clips import face_frame, leftovers, make_clip

REPO = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback"


def start_cli(*args: object) -> subprocess.Popen:
    """python cli.py ARGS as a terminal starts it (Ctrl-C raises KeyboardInterrupt there)."""
    command = [sys.executable, str(REPO / "cli.py"), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt: give the
    # child the disposition of a program run in a terminal, where Ctrl-C is pressed.
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt(child: subprocess.Popen, *signals: int, gap: float = 0.2) -> str:
    """Ctrl-C the child (or send signals, gap seconds apart); checks exit 128 + the first signal, no traceback and
    one last line; returns that line."""
    for signum in signals or (signal.SIGINT,):
        child.send_signal(signum)
        time.sleep(gap)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 128 + (signals or (signal.SIGINT,))[0], stderr
    assert TRACEBACK not in stderr
    # multiprocessing's resource tracker, a process of its own, may warn about a worker's semaphore after ours ends
    return [line for line in stderr.strip().splitlines() if "resource_tracker" not in line][-1]


def wait_for(condition, child: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 600  # generous: model loading on a busy machine can take minutes
    while not condition() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition(), f"{what} never happened (exit code {child.poll()})"


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_no_file(weights, tmp_path):
    source = make_clip(tmp_path / "long.mp4", frames=400, width=320, height=240)
    output = tmp_path / "out.mp4"
    child = start_cli("process", source, "-e", "happy", "--weights", weights["random"], "-o", output, "--no-progress")
    wait_for(lambda: leftovers(tmp_path), child, "encoding")  # the encoder's temp file appears once frames flow
    time.sleep(0.5)
    assert interrupt(child) == "interrupted: no output was written"
    assert not output.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_while_modules_load_exits_130(weights, tmp_path, delay):
    """The first seconds go to imports and model loading; Ctrl-C there is one line and exit 130 too."""
    source = make_clip(tmp_path / "in.mp4", frames=50)
    child = start_cli("process", source, "-e", "happy", "--weights", weights["random"], "-o", tmp_path / "out.mp4")
    time.sleep(delay)
    assert interrupt(child).startswith("interrupted: ")
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def done_in_manifest(out: Path) -> set[str]:
    try:
        files = json.loads((out / "manifest.json").read_text())["files"]
    except (OSError, ValueError):
        return set()
    return {name for name, entry in files.items() if entry["status"] == "done"}


def start_parallel_convert(weights, tmp_path: Path, count: int) -> tuple[subprocess.Popen, Path, Path, list]:
    """convert --jobs 2 of count photos, once a first file is in its manifest: (the child, IN_DIR, OUT_DIR, the
    options it was given)."""
    photos, out = tmp_path / "in", tmp_path / "out"
    photos.mkdir()
    for index in range(count):
        cv2.imwrite(str(photos / f"p{index:02d}.png"), face_frame(480, 360, index))
    options = ["-e", "happy", "--weights", weights["random"], "--crop-size", 64, "--blend", "feather"]
    child = start_cli("convert", photos, out, *options, "--jobs", 2)
    wait_for(lambda: done_in_manifest(out), child, "a first file in the manifest")
    return child, photos, out, options


@pytest.mark.slow
def test_interrupted_parallel_convert_records_each_finished_file_and_resumes(weights, tmp_path):
    child, photos, out, options = start_parallel_convert(weights, tmp_path, 48)
    assert interrupt(child).startswith("interrupted: finished files are kept in OUT_DIR")
    listed = done_in_manifest(out)
    on_disk = {p.name for p in out.iterdir() if p.name != "manifest.json"}  # temp files too: there must be none
    assert listed == on_disk and 0 < len(listed) <= 48  # photos already inside a worker's pipeline finish
    written = {name: (out / name).stat().st_mtime_ns for name in listed}

    again = subprocess.run([sys.executable, str(REPO / "cli.py"), "convert", photos, out, *map(str, options)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{48 - len(listed)} done, {len(listed)} skipped ({len(listed)} already complete" in again.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in listed} == written
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert {name: entry["status"] for name, entry in files.items()} == {
        f"p{index:02d}.png": "skipped" if f"p{index:02d}.png" in listed else "done" for index in range(48)}




@pytest.mark.slow
@pytest.mark.parametrize("signals, line", [
    ((signal.SIGINT, signal.SIGINT), "interrupted: no output was written"),  # an impatient double Ctrl-C
    ((signal.SIGTERM,), "terminated: no output was written"),
    ((signal.SIGTERM, signal.SIGINT, signal.SIGTERM), "terminated: no output was written"),
])
def test_stop_signals_mid_video_stop_cleanly(shared_dir, weights, tmp_path, signals, line):
    output = tmp_path / "d18_sad.mp4"
    child = start_cli("process", shared_dir / "media" / "video" / "d18.mp4", "-e", "sad", "--weights",
                      weights["random"], "-o", output, "--no-progress")
    wait_for(lambda: leftovers(tmp_path), child, "encoding")
    time.sleep(0.3)
    assert interrupt(child, *signals) == line
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file


@pytest.mark.slow
def test_sigterm_on_a_parallel_convert_exits_143_with_a_true_manifest(weights, tmp_path):
    child, _, out, _ = start_parallel_convert(weights, tmp_path, 32)
    assert interrupt(child, signal.SIGTERM).startswith("terminated: finished files are kept in OUT_DIR")
    listed = done_in_manifest(out)
    assert listed == {p.name for p in out.iterdir() if p.name != "manifest.json"} and 0 < len(listed) <= 32
