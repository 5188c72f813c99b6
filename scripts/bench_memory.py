#!/usr/bin/env python
"""Peak memory of `process` on a long and a short clip: memory must not grow with the video's length.

Runs `python cli.py process CLIP ...` as a subprocess per clip and variant; the peak resident set size comes from the
kernel when the process ends (os.wait4's ru_maxrss), and /proc/PID/status is polled meanwhile so the table also shows
the resident size halfway through and near the end (flat = constant memory). Goal: peak on d6.mp4 (33.6 s) / peak on
d18.mp4 (7.2 s) <= 1.15.

    .venv/bin/python scripts/bench_memory.py
    .venv/bin/python scripts/bench_memory.py --variants default --before /tmp/before --no-write
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bench_common as bc

CLIPS = ("d6.mp4", "d18.mp4")  # long, short: the same 480x480 30 fps source
VARIANT_FLAGS = {"default": [], "fast": ["--fast"]}
POLL_S = 0.05


@dataclass(frozen=True)
class MemoryRun:
    peak_mib: float
    middle_mib: float
    late_mib: float
    seconds: float


def rss_mib(pid: int) -> float | None:
    """Current resident set size of pid in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_process(cli: Path, clip: Path, weights: Path, output: Path, flags: list[str]) -> MemoryRun:
    """One `process` run: peak RSS (kernel's ru_maxrss), and the RSS sampled at 50 % and 90 % of its run time."""
    command = [sys.executable, str(cli), "process", str(clip), "-e", "surprised", "--weights", str(weights), "-o",
               str(output), "--no-progress", *flags]
    log = output.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as stderr:  # a file, not a pipe: a chatty child must never block on a full pipe
        child = subprocess.Popen(command, cwd=cli.parent, stdout=subprocess.DEVNULL, stderr=stderr)
    samples: list[tuple[float, float]] = []
    while True:
        # wait4 rather than poll(): it reaps the child and hands back that child's own resource usage.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        value = rss_mib(child.pid)
        if value is not None:
            samples.append((time.perf_counter() - started, value))
        time.sleep(POLL_S)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"process failed ({' '.join(command)}):\n{log.read_text()[-2000:]}")
    return MemoryRun(usage.ru_maxrss / 1024, sample_at(samples, 0.5 * seconds), sample_at(samples, 0.9 * seconds),
                     seconds)


def sample_at(samples: list[tuple[float, float]], moment: float) -> float:
    """The RSS sample nearest to `moment` seconds into the run."""
    return min(samples, key=lambda sample: abs(sample[0] - moment))[1] if samples else float("nan")


def measure(args: argparse.Namespace, weights: Path, folder: Path) -> list[tuple[str, dict[str, MemoryRun]]]:
    """Per variant: {clip name: MemoryRun}; each clip's best (lowest peak) of --rounds runs."""
    variants = [(f"before ({args.before_label})", args.before / "cli.py", [])] if args.before else []
    variants += [(name, bc.REPO / "cli.py", VARIANT_FLAGS[name]) for name in args.variants]
    results = []
    for label, cli, flags in variants:
        runs = {}
        for name in CLIPS:
            clip = bc.shared_clip(name)
            output = folder / f"{label[:6]}-{name}".replace(" ", "_")
            tries = [run_process(cli, clip, weights, output, flags) for _ in range(args.rounds)]
            runs[name] = min(tries, key=lambda run: run.peak_mib)
        results.append((label, runs))
    return results


def memory_table(results: list[tuple[str, dict[str, MemoryRun]]]) -> str:
    rows = []
    for label, runs in results:
        long_run, short_run = runs[CLIPS[0]], runs[CLIPS[1]]
        ratio = long_run.peak_mib / short_run.peak_mib
        rows.append((label, f"{short_run.peak_mib:.0f}", f"{long_run.peak_mib:.0f}", f"{ratio:.3f}",
                     "met" if ratio <= 1.15 else "not met",
                     f"{long_run.middle_mib:.0f} / {long_run.late_mib:.0f}", f"{long_run.seconds:.1f}"))
    header = ["variant", f"peak RSS MiB, {CLIPS[1]} (7.2 s)", f"peak RSS MiB, {CLIPS[0]} (33.6 s)",
              "ratio", "goal <= 1.15", f"RSS at 50 % / 90 % of the {CLIPS[0]} run", f"{CLIPS[0]} wall s"]
    return bc.table(header, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None,
                        help="generator (default: the shipped weights, else a random-init 128² one)")
    parser.add_argument("--variants", nargs="+", default=["default", "fast"], choices=list(VARIANT_FLAGS))
    parser.add_argument("--before", type=Path, default=None, help="an older checkout whose default is measured too")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--rounds", type=int, default=1, help="runs per clip and variant (lowest peak kept)")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    clock = bc.RunClock()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as name:
        folder = Path(name)
        weights = args.weights or bc.default_weights(folder)
        results = measure(args, weights.expanduser().resolve(), folder)
    notes = (f"- `python cli.py process CLIP -e surprised --weights {weights.name} [--fast]`, one process per run; "
             "peak = the kernel's ru_maxrss of that process (os.wait4), the other columns are /proc/PID/status "
             "VmRSS samples. Frames move through bounded queues (queue_size per stage), so memory stays flat.")
    body = bc.section("Memory: peak RSS of `process`, long vs short clip", bc.command_line(), clock,
                      [memory_table(results), notes], args.note)
    print(body)
    if not args.no_write:
        bc.write_section("memory", body)


if __name__ == "__main__":
    main()
