"""scripts/region_signal.py: the judge's accuracy on neutral photos with one region of an expressive photo pasted in."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
sys.path.insert(0, str(ROOT / "tests" / "scripts"))

import region_signal  # noqa: E402
from clips import save_weights  # noqa: E402
from test_landmark_signal import write_people  # noqa: E402


def test_bands_are_soft_edged_and_cover_their_rows() -> None:
    whole = region_signal.band_mask(256, 0.0, 1.0)
    assert whole.shape == (256, 256, 1) and np.allclose(whole, 1.0)
    brows = region_signal.band_mask(256, *region_signal.REGIONS["brows"])[:, 0, 0]
    assert brows[60:82].min() > 0.85 and brows[:30].max() < 0.01 and brows[116:].max() < 0.01  # rows 51-92
    upper = region_signal.band_mask(256, *region_signal.REGIONS["upper"])[:, 0, 0]
    lower = region_signal.band_mask(256, *region_signal.REGIONS["lower"])[:, 0, 0]
    assert np.allclose(upper + lower, 1.0, atol=1e-3)  # the two halves split the face
    base, source = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 200, np.uint8)
    assert np.array_equal(region_signal.paste(base, source, region_signal.band_mask(4, 0.0, 1.0)), source)


def test_cli_prints_photos_and_edits_and_bad_input_is_one_line(tmp_path: Path) -> None:
    data = write_people(tmp_path / "faces", 3)
    weights = save_weights(tmp_path / "g.safetensors", identity=True)  # residual 0: an edit is its input
    result = CliRunner().invoke(region_signal.main, [str(data), "--expressions", "sad,happy", "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    rows = {tuple(cells[:3]): [float(c) for c in cells[3:]] for line in result.output.splitlines()[2:]
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(rows) == {("sad", "photo", "3"), ("sad", "edit", "3"), ("happy", "photo", "3"), ("happy", "edit", "3")}
    for expression in ("sad", "happy"):
        neutral, *edited = rows[(expression, "edit", "3")]
        assert all(value == pytest.approx(neutral) for value in edited)  # pasting a neutral photo into itself
    for bad in (["--expressions", "neutral"], ["--expressions", "bored"]):
        result = CliRunner().invoke(region_signal.main, [str(data), *bad])
        assert result.exit_code == 1 and "Error:" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(region_signal.main, [str(data), "--identities", "99"])
    assert result.exit_code == 1 and "no person" in result.output
