#!/usr/bin/env python
"""Training throughput: seconds per iteration (one D update, G every n_critic-th; averaged over whole n_critic
cycles) for the paper's setup (128², batch 8) on the CPU, with 2 DDP processes on the CPU, and on CUDA when present.

Synthetic batches, so only the model maths is timed (data loading runs in parallel workers in real training).
Prints a markdown table and writes it into docs/BENCHMARKS.md (section "train"; --no-write to skip). Another training
run on the same CPU halves these numbers: pause it for the measurement.

    .venv/bin/python scripts/bench_train.py --steps 10
    .venv/bin/python scripts/bench_train.py --steps 20 --config configs/train/tfeid_128.yaml --skip-ddp
    .venv/bin/python scripts/bench_train.py --recipes configs/train/tfeid_64.yaml configs/train/tfeid_128.yaml

--recipes times each config in this one process, alternating over --rounds (best of each kept), and writes the
section "train-recipes": generator updates per second side by side, the figure that matters for a recipe's speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import bench_common as bc
from usgan.expressions import EXPRESSIONS
from usgan.training.config import TrainConfig, load_train_config
from usgan.training.distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from usgan.training.loop import build_state
from usgan.training.step import train_step

RESULT_TAG = "BENCH_RESULT "


@dataclass(frozen=True)
class BenchResult:
    setup: str
    processes: int
    device: str
    image_size: int
    batch_size: int
    amp: str
    seconds_per_iter: float

    def row(self) -> str:
        images = self.processes * self.batch_size / self.seconds_per_iter
        return (f"| {self.setup} | {self.processes} | {self.device} | {self.image_size}² | {self.batch_size} | "
                f"{self.amp} | {self.seconds_per_iter:.3f} | {1 / self.seconds_per_iter:.2f} | {images:.1f} |")


HEADER = ("| setup | processes | device | image | batch/process | amp | s/iter (n_critic-avg) | iter/s | images/s |\n"
          "|---|---|---|---|---|---|---|---|---|")


def synthetic_batch(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    size, batch = config.model.image_size, config.optim.batch_size
    return torch.rand(batch, 3, size, size) * 2 - 1, torch.randint(0, len(EXPRESSIONS), (batch,))


def time_iterations(config: TrainConfig, info: DistInfo, steps: int) -> float:
    """Seconds per iteration over whole n_critic cycles, after one warm-up cycle."""
    state = build_state(config, info)
    state.step = 2 * config.optim.warmup_steps  # past a fine-tuning warm-up: G updates at its full rate
    batch = synthetic_batch(config)
    n_critic = config.optim.n_critic
    cycles = max(1, math.ceil(steps / n_critic))
    for _ in range(n_critic):
        train_step(state, batch, config, info)
        state.step += 1
    sync(info)
    start = time.perf_counter()
    for _ in range(cycles * n_critic):
        train_step(state, batch, config, info)
        state.step += 1
    sync(info)
    return (time.perf_counter() - start) / (cycles * n_critic)


def sync(info: DistInfo) -> None:
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    barrier(info)


def measure(config: TrainConfig, steps: int, setup: str, use_cuda: bool) -> BenchResult | None:
    """Run in this process (possibly one rank of torchrun); returns the result on rank 0 only."""
    info = init_distributed(use_cuda=use_cuda)
    try:
        seconds = time_iterations(config, info, steps)
    finally:
        shutdown_distributed(info)
    if not info.is_main:
        return None
    amp = config.amp if info.device.type == "cuda" else "none"
    return BenchResult(setup, info.world_size, info.device.type, config.model.image_size,
                       config.optim.batch_size, amp, seconds)


RECIPE_HEADER = ("| recipe | image | batch | D base channels | n_critic | s/iter (n_critic-avg) | G updates/s | "
                 "vs first |\n|---|---|---|---|---|---|---|---|")


def compare_recipes(paths: list[Path], steps: int, rounds: int) -> str:
    """Time each recipe in turn, `rounds` times (best kept, so a burst of other load hurts no single one)."""
    configs = [load_train_config(path, {}) for path in paths]
    info = init_distributed(use_cuda=False)
    best = [math.inf] * len(configs)
    for _ in range(rounds):
        for index, config in enumerate(configs):
            best[index] = min(best[index], time_iterations(config, info, steps))
    first = 1 / (best[0] * configs[0].optim.n_critic)
    rows = []
    for path, config, seconds in zip(paths, configs, best):
        g_rate = 1 / (seconds * config.optim.n_critic)
        rows.append(f"| {path.name} | {config.model.image_size}² | {config.optim.batch_size} | "
                    f"{config.model.d_conv_dim} | {config.optim.n_critic} | {seconds:.3f} | {g_rate:.3f} | "
                    f"{g_rate / first:.2f}x |")
    return RECIPE_HEADER + "\n" + "\n".join(rows)


def run_torchrun(args: argparse.Namespace, processes: int, setup: str, use_cuda: bool) -> BenchResult:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               __file__, "--worker", "--steps", str(args.steps), "--setup", setup]
    command += ["--config", str(args.config)] if args.config else []
    command += [] if use_cuda else ["--cpu"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"torchrun benchmark failed:\n{done.stderr[-3000:]}")
    return BenchResult(**json.loads(lines[0][len(RESULT_TAG):]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (rounded up to whole n_critic cycles)")
    parser.add_argument("--config", type=Path, default=None, help="training config (default: paper's 128² b8)")
    parser.add_argument("--recipes", type=Path, nargs="+", default=None, metavar="CONFIG",
                        help="compare these training configs side by side on the CPU (section train-recipes)")
    parser.add_argument("--rounds", type=int, default=2, help="with --recipes: alternating rounds, best kept")
    parser.add_argument("--skip-ddp", action="store_true", help="skip the 2-process CPU DDP row")
    parser.add_argument("--note", default="", help="a line added to the section (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setup", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    config = load_train_config(args.config, {})
    if args.worker:
        result = measure(config, args.steps, args.setup, use_cuda=not args.cpu)
        if result is not None:
            print(RESULT_TAG + json.dumps(result.__dict__), flush=True)
        return
    clock = bc.RunClock()
    if args.recipes:
        table = compare_recipes(args.recipes, args.steps, args.rounds)
        notes = (f"- threads: torch {torch.get_num_threads()} (CPU cores {os.cpu_count()}); synthetic batches; "
                 f"best of {args.rounds} alternating rounds of {args.steps} steps (whole n_critic cycles, after a "
                 "warm-up cycle); one step's D and G updates share G's forward.")
        body = bc.section("Training recipes: generator updates per second", bc.command_line(), clock,
                          [table, notes], args.note)
        print(body)
        if not args.no_write:
            bc.write_section("train-recipes", body)
        return
    results = [measure(config, args.steps, "CPU, 1 process", use_cuda=False)]
    if not args.skip_ddp:
        results.append(run_torchrun(args, 2, "CPU, DDP gloo", use_cuda=False))
    if torch.cuda.is_available():
        results.append(measure(config, args.steps, "CUDA, 1 GPU", use_cuda=True))
        if torch.cuda.device_count() > 1:
            results.append(run_torchrun(args, torch.cuda.device_count(), "CUDA, DDP NCCL", use_cuda=True))
    table = HEADER + "\n" + "\n".join(r.row() for r in results if r is not None)
    notes = (f"- threads: torch {torch.get_num_threads()} (CPU cores {os.cpu_count()}); DDP CPU ranks use 1 thread "
             f"each. Synthetic batches; config: {args.config or 'the paper defaults'}; "
             f"{'no GPU on this machine.' if not torch.cuda.is_available() else 'GPU rows included.'}")
    body = bc.section(f"Training: iterations/s at {config.model.image_size}², batch {config.optim.batch_size}",
                      bc.command_line(), clock, [table, notes], args.note)
    print(body)
    if not args.no_write:
        bc.write_section("train", body)


if __name__ == "__main__":
    main()
