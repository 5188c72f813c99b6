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
    result = CliRunner().invoke(region_signal.main,
                                [str(data), "--expressions", "sad,happy", "--weights", str(weights)])
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


def test_kept_at_keeps_what_a_generator_of_that_size_could_make() -> None:
    rng = np.random.default_rng(0)
    neutral = [rng.integers(40, 200, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    offset = [np.clip(n.astype(int) + 30, 0, 255).astype(np.uint8) for n in neutral]  # a uniform change
    stripes = [n.copy() for n in neutral]
    for s in stripes:
        s[::2] = np.clip(s[::2].astype(int) + 40, 0, 255)  # a change of period 2 rows
    assert all(np.array_equal(k, s) for k, s in zip(region_signal.kept_at(neutral, stripes, 64, 0), stripes))
    for taps in (0, 3):
        kept = region_signal.kept_at(neutral, offset, 16, taps)
        assert all(np.abs(k.astype(int) - o).max() <= 1 for k, o in zip(kept, offset))  # kept at any size
    kept = region_signal.kept_at(neutral, stripes, 16, 3)
    change = [k.astype(int) - n for k, n in zip(kept, neutral)]
    assert all(abs(c[::2].mean() - c[1::2].mean()) < 1 for c in change)  # the stripes are gone: only their mean
    assert all(abs(c.mean() - 20) < 1.5 for c in change)


def test_cli_generator_sizes_add_rows_and_bad_sizes_are_one_line(tmp_path: Path) -> None:
    data = write_people(tmp_path / "faces", 3)
    result = CliRunner().invoke(region_signal.main, [str(data), "--generator-sizes", "32,16", "--residual-blur", "0"])
    assert result.exit_code == 0, result.output
    sources = [[c.strip() for c in line.strip("|").split("|")][1] for line in result.output.splitlines()[2:]]
    assert sources == ["photo", "photo at 32 px", "photo at 16 px"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in result.output.splitlines()[2:]]
    assert rows[1][3:] == rows[0][3:]  # at the photos' own size without a blur, the whole change is kept
    for bad in ("64,x", "4"):
        result = CliRunner().invoke(region_signal.main, [str(data), "--generator-sizes", bad])
        assert result.exit_code == 1 and "--generator-sizes" in result.output
        assert len(result.output.strip().splitlines()) == 1
