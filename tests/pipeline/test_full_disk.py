"""A full disk under process and convert: every output is complete or absent, the manifest stays true and readable,
and the error is one line that says what happened."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from PIL import Image

from clips import leftovers, portrait

REPO = Path(__file__).resolve().parents[2]


def file_size_limit(limit: int):
    """preexec_fn: files of the child may grow to limit bytes, as on a nearly full disk (a write across the limit is
    cut short without an error; the next one fails)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_cli(*args: object, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec_fn)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_a_photo_onto_a_nearly_full_disk_is_one_error_and_no_file(weights, tmp_path, suffix):
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), portrait())
    output = tmp_path / "out" / f"edited{suffix}"
    done = run_cli("process", source, "-e", "sad", "--weights", weights["identity"], "-o", output, "--no-progress",
                   preexec_fn=file_size_limit(4000))
    assert done.returncode == 1, done.stdout
    assert "wrote" not in done.stdout
    assert done.stderr.strip() == f"error: {output}: cannot write {Image.registered_extensions()[suffix]} image: " \
                                  "file too large for the device or the file size limit"
    assert not output.exists() and leftovers(tmp_path) == []


def test_convert_onto_a_disk_that_fills_keeps_every_output_whole_and_the_manifest_true(weights, tmp_path,
                                                                                      small_disk):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(8):
        cv2.imwrite(str(photos / f"p{index}.jpg"), portrait())
    out = small_disk / "out"
    done = run_cli("convert", photos, out, "-e", "sad", "--weights", weights["identity"], "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())["files"] if (out / "manifest.json").exists() else {}
    for name in (f"p{index}.jpg" for index in range(8)):
        output = out / name
        if output.exists():
            with Image.open(output) as image:
                image.load()  # complete: decodes to the end
        if manifest.get(name, {}).get("status") == "done":
            assert output.exists(), name
    assert leftovers(out) == []
    assert "no space left on the device" in done.stdout + done.stderr
