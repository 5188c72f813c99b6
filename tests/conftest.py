"""Fixtures shared by all tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared relative to the repo root (real clips and data); skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR.resolve()} is absent")
    return SHARED_DIR.resolve()


def mounted_tmpfs(folder: Path, options: str):
    """A tmpfs mounted at folder (made here) for the test, unmounted after; skips where mounting is not allowed."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB file system: it fills after a photo or two."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=96k")


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only file system (root ignores a folder's permission bits)."""
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=64k")
