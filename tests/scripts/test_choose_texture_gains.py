"""scripts/choose_texture_gains.py: the choice among (warp scale, inner brows, texture gain) candidates."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import choose_texture_gains  # noqa: E402

# (warp scale, inner brows, texture gain) -> (judge rate, identity)
ROWS = {(1.0, 1.0, 2.5): (0.52, 0.83), (1.0, 1.5, 2.5): (0.60, 0.805), (1.0, 2.0, 2.5): (0.79, 0.77),
        (1.0, -1.5, 1.5): (0.60, 0.81)}


def test_the_strongest_above_the_identity_floor_wins_and_ties_go_to_identity():
    assert choose_texture_gains.strongest(ROWS, 0.80) == (1.0, -1.5, 1.5)  # .60 twice: the higher identity
    assert choose_texture_gains.strongest(ROWS, 0.75) == (1.0, 2.0, 2.5)


def test_with_no_candidate_above_the_floor_the_highest_identity_is_kept():
    assert choose_texture_gains.strongest(ROWS, 0.95) == (1.0, 1.0, 2.5)


def test_lists_of_numbers_and_an_unknown_target_is_one_line():
    assert choose_texture_gains.floats("1,-0.5,2") == [1.0, -0.5, 2.0]
    result = CliRunner().invoke(choose_texture_gains.main, [str(ROOT), "--identities", "01", "--targets", "sad,grumpy"])
    assert result.exit_code == 2 and "not an expression: grumpy" in result.output
