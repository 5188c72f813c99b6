"""scripts/bench_train.py --recipes: generator updates per second of several configs, side by side."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_train  # noqa: E402


def test_recipes_table_rates_generator_updates_against_the_first(tmp_path: Path, monkeypatch) -> None:
    smoke = REPO / "configs" / "train" / "smoke.yaml"
    slow = tmp_path / "slow.yaml"  # n_critic 4 instead of 2
    slow.write_text(smoke.read_text().replace("n_critic: 2", "n_critic: 4")
                    .replace("total_steps: 20", "total_steps: 40"))
    # seconds per iteration, round by round (alternating recipes); the best round of each counts. Wall-clock
    # timings on a shared 2-core machine are too noisy to assert on (that is the benchmark's job).
    timings = {2: iter([0.7, 0.5]), 4: iter([0.3125, 0.9])}
    monkeypatch.setattr(bench_train, "time_iterations",
                        lambda config, info, steps: next(timings[config.optim.n_critic]))
    table = bench_train.compare_recipes([smoke, slow], steps=4, rounds=2)
    rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines()[2:]]
    assert [row[1] for row in rows] == ["smoke.yaml", "slow.yaml"]
    assert [row[5] for row in rows] == ["2", "4"]
    assert [row[6] for row in rows] == ["0.500", "0.312"]  # best rounds
    assert [row[-2] for row in rows] == ["1.00x", "0.80x"]  # G updates/s: 1 / (0.3125 * 4) against 1 / (0.5 * 2)


def test_timing_starts_past_a_fine_tuning_warm_up(monkeypatch) -> None:
    config = bench_train.load_train_config(REPO / "configs" / "train" / "smoke.yaml", {"optim.warmup_steps": 5})
    steps = []
    monkeypatch.setattr(bench_train, "train_step", lambda state, *args: steps.append(state.step))
    bench_train.time_iterations(config, bench_train.init_distributed(use_cuda=False), steps=2)
    assert steps and min(steps) == 10  # G updates at its full LR from step 2 * warmup_steps
