#!/usr/bin/env python
"""Photos/s of `convert` with --engine local against --engine ray on this machine, side by side in one run.

Usage (from the repo root):
  PYTHONPATH=. .venv/bin/python scripts/bench_convert.py [--photos 144] [--jobs 2] [--rounds 2] \
      [--no-write]
Makes --photos face photos (the portrait InsightFace ships, on a textured background, shifted per photo), converts
them with the default settings and a generator of the real size, in rounds that run both engines in turn (best of
each). The Ray engine runs on a fresh local Ray of --jobs CPUs per run, started outside the timing (as a running
cluster is); its start time is reported apart. A probe also times the orchestration alone (no-op steps) with Ray Core tasks and actors and
with Ray Data, the measurement behind docs/RAY.md's choice. Rewrites the `convert-engines` section of
docs/BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2

import bench_common as bc


def make_photos(folder: Path, count: int) -> Path:
    """count 480x360 photos of one face, each shifted and textured differently (as the tests make them)."""
    sys.path.insert(0, str(bc.REPO / "tests" / "pipeline"))
    from clips import face_frame

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"p{index:03d}.jpg"), face_frame(480, 360, index))
    return folder


def engine_runs(photos: Path, work: Path, jobs: int) -> tuple[dict[str, float], float]:
    """Best seconds per engine over rounds that run both in turn, and the slowest Ray start. Every run starts cold:
    a fresh OUT_DIR (nothing is skipped), and for Ray a fresh local Ray, started outside the timing, so that its
    workers load the models inside it as the local engine's worker processes do."""
    import ray

    from pipeline.batch import convert_dir
    from pipeline.config import ProcessConfig, SynthesizerConfig
    from pipeline.engines import engine_for

    config = ProcessConfig(synthesizer=SynthesizerConfig(weights=bc.default_weights(work)), progress=False)
    best, ray_start = {"local": float("inf"), "ray": float("inf")}, 0.0
    for round_index in range(ARGS.rounds):
        for engine in best:
            if engine == "ray":
                started = time.perf_counter()
                ray.init(num_cpus=jobs, include_dashboard=False, logging_level=logging.WARNING)
                ray_start = max(ray_start, time.perf_counter() - started)
            started = time.perf_counter()
            summary = convert_dir(photos, work / f"{engine}{round_index}", config, jobs=jobs,
                                  engine=engine_for(engine))
            best[engine] = min(best[engine], time.perf_counter() - started)
            assert not summary.failed, summary.failed
            if engine == "ray":
                ray.shutdown()
    return best, ray_start


def orchestration_probe(count: int, chunk: int) -> dict[str, float]:
    """Seconds to push count no-op files through prepare -> generator actor -> finish, with Ray Core and Ray Data."""
    import ray

    @ray.remote
    def step(item):
        return item

    @ray.remote(num_cpus=0)
    class Batch:
        def run(self, *items):
            return items if len(items) > 1 else items[0]

    def with_core() -> None:
        actor, refs = Batch.remote(), []
        for start in range(0, count, chunk):
            prepared = [step.remote(i) for i in range(start, min(count, start + chunk))]
            edits = actor.run.options(num_returns=len(prepared)).remote(*prepared)
            refs += [step.remote(edit) for edit in (edits if len(prepared) > 1 else [edits])]
        ray.get(refs)

    ray.data.DataContext.get_current().enable_progress_bars = False

    def with_data() -> None:
        class DataBatch:
            def __call__(self, batch):
                return batch

        dataset = ray.data.range(count).map(lambda row: row)
        dataset = dataset.map_batches(DataBatch, batch_size=chunk, concurrency=1).map(lambda row: row)
        assert sum(1 for _ in dataset.iter_rows()) == count

    return bc.interleaved_best({"Ray Core tasks + actor": with_core, "Ray Data map/map_batches": with_data}, 2)


def main() -> None:
    clock = bc.RunClock()
    import ray

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        photos = make_photos(work / "in", ARGS.photos)
        seconds, ray_start = engine_runs(photos, work, ARGS.jobs)
        ray.init(num_cpus=ARGS.jobs, include_dashboard=False, logging_level=logging.WARNING)
        probe = orchestration_probe(ARGS.photos, 8)
        ray.shutdown()
    rows = [[engine, f"{seconds[engine]:.1f}", f"{ARGS.photos / seconds[engine]:.2f}",
             f"{seconds['local'] / seconds[engine]:.2f}"] for engine in ("local", "ray")]
    probe_rows = [[name, f"{value:.2f}", f"{1000 * value / ARGS.photos:.1f}"] for name, value in probe.items()]
    body = bc.section(
        f"Convert engines: local vs Ray, {ARGS.photos} photos, --jobs {ARGS.jobs}", bc.command_line(), clock, [
            "### Photos/s (best of the rounds; goal: Ray >= 0.8 of local)\n\n" + bc.table(
                ["engine", "seconds", "photos/s", "vs local"], rows),
            f"Ray's own start (`ray.init`, {ARGS.jobs} CPUs) took up to {ray_start:.1f} s, outside the timing: a "
            "cluster is started once for many runs. Every run of either engine starts its workers and loads the "
            "models in them inside the timing (a fresh Ray each time, no warm workers). The CPU use line "
            "counts Ray's workers under other processes (they are not this process's children).",
            "### Orchestration alone: no-op steps, prepare -> batched actor -> finish\n\n" + bc.table(
                ["way", "seconds", "ms per file"], probe_rows),
        ], note="default settings, generator of the real size (random weights), 480x360 photos of one face")
    print(body)
    if not ARGS.no_write:
        bc.write_section("convert-engines", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=144)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    ARGS = parser.parse_args()
    main()
