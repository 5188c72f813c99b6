"""scripts/video_stills.py: evenly spaced stills from videos, for prepare-data (the unseen-faces evaluation set)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))

import video_stills  # noqa: E402
from clips import decode_frames, make_clip  # noqa: E402


def test_still_indices_are_spread_and_skip_the_ends():
    assert video_stills.still_indices(12, 3) == [3, 6, 9]
    assert video_stills.still_indices(5, 10) == [0, 1, 2, 3, 4]  # more stills than frames: every frame once
    assert video_stills.still_indices(100, 1) == [50]


def test_writes_the_exact_frames_into_the_expression_folder(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=12, audio=False)
    result = CliRunner().invoke(video_stills.main, [str(clip), "--out", str(tmp_path / "stills"), "--per-video", "3",
                                                    "--expression", "sad"])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "stills" / "sad").iterdir())
    assert [p.name for p in written] == ["clip_f00003.png", "clip_f00006.png", "clip_f00009.png"]
    frames = decode_frames(clip)
    for path, index in zip(written, (3, 6, 9)):
        assert np.array_equal(cv2.imread(str(path)), frames[index])  # PNG is lossless
    assert "wrote 3 stills from 1 videos" in result.output


def test_a_file_that_is_not_a_video_is_a_one_line_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    result = CliRunner().invoke(video_stills.main, [str(bad), "--out", str(tmp_path / "stills")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and str(bad) in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "stills" / "neutral").exists() or not any((tmp_path / "stills" / "neutral").iterdir())
