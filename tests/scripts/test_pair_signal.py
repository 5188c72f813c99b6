"""scripts/pair_signal.py: the share of paired targets that a per-expression change explains."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import pair_signal  # noqa: E402


def write_people(root: Path, people: int, change: str) -> Path:
    """Per person a smooth neutral photo plus a happy one: neutral + one shared pattern ('shared'), or neutral +
    that person's own random pattern ('own'). TFEID-style names give the identity."""
    rng = np.random.default_rng(0)
    shared = rng.integers(-40, 41, (32, 32, 3))
    for person in range(1, people + 1):
        base = np.kron(rng.integers(70, 180, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.int64)
        pattern = shared if change == "shared" else rng.integers(-40, 41, (32, 32, 3))
        for folder, image, letter in (("neutral", base, "a"), ("happy", base + pattern, "d")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(root / folder / f"{person:02d}11{letter}01.png")
    return root


def test_a_change_shared_by_everyone_is_fully_explained(tmp_path: Path) -> None:
    results = pair_signal.pair_signal(write_people(tmp_path, 6, "shared"), ("05", "06"), size=32, pool=1)
    happy = {r.registered: r for r in results if r.expression == "happy"}
    assert set(happy) == {False, True} and (happy[False].train_pairs, happy[False].val_pairs) == (4, 2)
    assert happy[False].train_l1 == pytest.approx(20 / 127.5, rel=0.05)  # mean |uniform integer in [-40, 40]|
    assert happy[False].train_explained == pytest.approx(1.0, abs=1e-4)
    assert happy[False].val_explained == pytest.approx(1.0, abs=1e-4)
    # Registration shifts the happy photos a little to match their neutral one; the bilinear resampling blurs this
    # pixel-noise pattern, so the shared change then explains less of what is left, but still most of it.
    assert 0.5 < happy[True].val_explained < 1.0


def test_a_change_of_each_persons_own_is_not_explained(tmp_path: Path) -> None:
    results = pair_signal.pair_signal(write_people(tmp_path, 6, "own"), ("05", "06"), size=32, pool=1)
    happy = next(r for r in results if r.expression == "happy" and not r.registered)
    assert happy.val_explained < 0.05


def test_cli_prints_a_table_and_bad_data_is_one_line(tmp_path: Path) -> None:
    data = write_people(tmp_path / "faces", 6, "shared")
    result = CliRunner().invoke(pair_signal.main, [str(data), "--identities", "05,06", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.count("| happy |") == 2 and "explained held-out" in result.output
    lone = write_people(tmp_path / "lone", 1, "shared")
    result = CliRunner().invoke(pair_signal.main, [str(lone), "--identities", "01"])
    assert result.exit_code == 1 and "Error:" in result.output and len(result.output.strip().splitlines()) == 1
