"""Fixtures shared by the usgan tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Folder names mix canonical names, the paper's codes and aliases, as real data sets do.
TINY_FOLDERS = ("angry", "DIS", "fear", "HAS", "neutral", "sadness", "SUS")


def write_face_folders(root: Path, count: int = 16, size: int = 32, identities: int = 4) -> Path:
    """count random RGB images spread over the 7 expression folders, named TFEID-style (PPTVxNN)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        expression = index % len(TINY_FOLDERS)
        folder = root / TINY_FOLDERS[expression]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{index % identities + 1:02d}11{'abcdefg'[expression]}{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    return root


@pytest.fixture
def tiny_faces(tmp_path: Path) -> Path:
    """16 random 32x32 crops over 7 expression folders, 4 TFEID-style identities."""
    return write_face_folders(tmp_path / "faces")


@pytest.fixture
def face_folders():
    """The writer behind tiny_faces, for tests that need other counts or sizes."""
    return write_face_folders
