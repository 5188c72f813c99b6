"""scripts/landmark_signal.py: the share of landmark changes that the guidance's target explains, and edit progress."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))

import landmark_signal  # noqa: E402
from clips import save_weights  # noqa: E402
from usgan.dataset import Sample  # noqa: E402
from usgan.expressions import EXPRESSIONS  # noqa: E402
from usgan.landmarks import EXPRESSIVE, LANDMARK_COUNT  # noqa: E402


def write_people(root: Path, people: int) -> Path:
    """Random 32 px photos of every expression for each person, TFEID-style names (PPTVxNN) giving the identity."""
    rng = np.random.default_rng(0)
    for person in range(1, people + 1):
        for index, expression in enumerate(EXPRESSIONS):
            (root / expression).mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / expression / f"{person:02d}11{'abcdefg'[index]}01.png")
    return root


def _samples(people: int) -> tuple[Sample, ...]:
    return tuple(Sample(Path(f"{p}{e}.png"), e, str(p)) for p in range(people) for e in ("neutral", "happy"))


def test_a_shared_change_is_fully_explained_and_a_personal_one_is_not() -> None:
    rng = torch.Generator().manual_seed(0)
    samples = _samples(4)
    shared = torch.randn(LANDMARK_COUNT, 2, generator=rng) * 0.01
    points = []
    for _ in range(4):
        face = torch.rand(LANDMARK_COUNT, 2, generator=rng)
        points += [face, face + shared]
    changes = landmark_signal.pair_changes(torch.stack(points), samples, {"0", "1", "2"}, "happy")
    assert changes.shape == (3, len(EXPRESSIVE), 2)  # one pair per chosen person
    size, share = landmark_signal.explained(changes, shared[list(EXPRESSIVE)])
    assert size == pytest.approx(100 * float(shared[list(EXPRESSIVE)].abs().mean()), rel=1e-5)
    assert share == pytest.approx(1.0, abs=1e-5)
    own = torch.randn(3, len(EXPRESSIVE), 2, generator=rng) * 0.01
    assert landmark_signal.explained(own, shared[list(EXPRESSIVE)])[1] < 0.05


def test_cli_prints_a_table_with_edit_progress_and_bad_data_is_one_line(tmp_path: Path) -> None:
    data = write_people(tmp_path / "faces", 4)
    weights = save_weights(tmp_path / "g.safetensors", identity=True)  # residual 0: the edits move nothing
    result = CliRunner().invoke(landmark_signal.main, [str(data), "--identities", "04", "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    assert torch.is_grad_enabled()  # the command must not switch autograd off for the rest of the process
    assert "| happy | 3 / 1 |" in result.output and "edit progress" in result.output
    assert "| neutral |" not in result.output
    happy = next(line for line in result.output.splitlines() if line.startswith("| happy |"))
    assert happy.rstrip(" |").endswith("0.00")
    lone = write_people(tmp_path / "lone", 1)
    result = CliRunner().invoke(landmark_signal.main, [str(lone), "--identities", "01"])
    assert result.exit_code == 1 and "Error:" in result.output and len(result.output.strip().splitlines()) == 1
