"""scripts/bench_train.py --recipes: generator updates per second of several configs, side by side."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_train  # noqa: E402


def test_recipes_table_rates_generator_updates_against_the_first(tmp_path: Path) -> None:
    smoke = REPO / "configs" / "train" / "smoke.yaml"
    slow = tmp_path / "slow.yaml"  # n_critic 4 instead of 2: about half the G updates per second
    slow.write_text(smoke.read_text().replace("n_critic: 2", "n_critic: 4").replace("total_steps: 20", "total_steps: 40"))
    table = bench_train.compare_recipes([smoke, slow], steps=4, rounds=1)
    rows = [line.split("|") for line in table.splitlines()[2:]]
    assert [row[1].strip() for row in rows] == ["smoke.yaml", "slow.yaml"]
    assert rows[0][-2].strip() == "1.00x"
    assert [row[5].strip() for row in rows] == ["2", "4"]
    assert 0 < float(rows[1][-2].strip().rstrip("x")) < 1


def test_timing_starts_past_a_fine_tuning_warm_up(monkeypatch) -> None:
    config = bench_train.load_train_config(REPO / "configs" / "train" / "smoke.yaml", {"optim.warmup_steps": 5})
    steps = []
    monkeypatch.setattr(bench_train, "train_step", lambda state, *args: steps.append(state.step))
    bench_train.time_iterations(config, bench_train.init_distributed(use_cuda=False), steps=2)
    assert steps and min(steps) == 10  # G updates at its full LR from step 2 * warmup_steps
