#!/usr/bin/env python
"""End-to-end `process` on a clip against real time, each stage's own throughput, and the pipeline's efficiency.

Each variant (default, --fast, or an older checkout's default via --before) runs in its own worker process. The
worker loads the models, then in every round (a) times each stage alone on the same frames, one after the other, with
the settings the pipeline gives it (thread counts included): decode, detect+track, align, synthesize, blend, encode;
and (b) runs the whole threaded pipeline (process_video, models already loaded) and records its fps and each stage's
busy seconds. Each keeps its best round. Efficiency = end-to-end fps / the slowest stage's isolated fps; the CPU bound
is what the cores could give if the stages' CPU time were spread perfectly (cores / CPU seconds per frame).
Separately, `python cli.py process` runs once per variant as a user runs it (start-up and model loading included).

The "presets" part states what the faster settings cost: PSNR of each variant's output against the default's (all
encoded losslessly, so encoder noise does not hide or inflate the difference), next to what x264 at CRF 18 itself
changes, and the faces the --fast detector settings find on the shared clips compared with the default's.

    .venv/bin/python scripts/bench_e2e.py
    .venv/bin/python scripts/bench_e2e.py --parts timing --before /tmp/before --rounds 3
    .venv/bin/python scripts/bench_e2e.py --parts timing --before . --before-label '64² generator' \
        --before-weights weights/experiments/stage4_64px_step3000.safetensors
    .venv/bin/python scripts/bench_e2e.py --parts presets --weights ~/.cache/usgan/bench/partial_g64.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bench_common as bc

STAGES = ("decode", "detect", "align", "synthesize", "blend", "encode")
STAGE_LABELS = {"detect": "detect+track"}
REAL_TIME_FPS = 30.0
RECALL_CLIPS = ("d18.mp4", "d6.mp4", "talk1.mp4", "d13.mp4", "d0.mp4", "d3.mp4", "d19.mp4", "d20.mp4")
RESULT_TAG = "BENCH_E2E "
# (row name, variant, overrides on top of lossless encoding) for the presets' quality table; "default" first.
QUALITY_VARIANTS = (
    ("default", "default", {}),
    ("default, CRF 18 (the shipped encoder setting)", "default", {"encoder.crf": 18}),
    ("before this work: detector letterboxed to 640, every frame", "default",
     {"detector.fit_frame": False, "tracker.detect_every": 1}),
    ("default, detector every frame", "default", {"tracker.detect_every": 1}),
    ("default, detector every 2nd frame holding (not interpolating)", "default", {"tracker.interpolate": False}),
    ("--fast", "fast", {}),
    ("default + bf16 generator only", "default", {"synthesizer.precision": "bf16"}),
    ("default + detector at 320 only", "default", {"detector.input_size": 320}),
    ("default + detector every 3rd frame only", "default", {"tracker.detect_every": 3}),
    ("default + seamless clone at 1/4 scale only", "default", {"clone_scale": 0.25}),
    ("default + feather blend (not in --fast)", "default", {"blend": "feather"}),
)


# ---------------------------------------------------------------- worker (runs inside the checkout it measures)


def checkout_pipeline(repo: Path) -> SimpleNamespace:
    """The pipeline functions this benchmark calls, imported from the checkout at repo: this one, or an older one
    (--before) whose pipeline.run module held them all."""
    sys.path.insert(0, str(repo))  # before the installed project, so that the checkout measured is the one imported
    try:
        from pipeline import config, edit, process
    except ImportError:
        import pipeline.faces
        import pipeline.run as run

        return SimpleNamespace(**vars(run), face_size=pipeline.faces.face_size)
    from pipeline.faces.detector import FaceDetector
    from pipeline.faces.tracking import face_size, track_faces
    from pipeline.video.decode import decode_video
    from pipeline.video.encode import encode_video
    from pipeline.video.probe import probe_video

    return SimpleNamespace(
        load_process_config=config.load_process_config, FAST_PRESET=config.FAST_PRESET,
        share_threads=config.share_threads, load_models=edit.load_models, plan_faces=edit.plan_faces,
        process_video=process.process_video, decode_stage=process.decode_stage, RunCounts=process.RunCounts,
        synthesize_stage=process.synthesize_stage, blend_stage=process.blend_stage,
        encoder_config=process.encoder_config, FaceDetector=FaceDetector, face_size=face_size,
        track_faces=track_faces, decode_video=decode_video, encode_video=encode_video, probe_video=probe_video)


def worker_config(run: Any, variant: str, weights: str, extra: dict[str, Any]) -> Any:
    """The ProcessConfig `process` would build for this variant, with automatic threads filled in as it does."""
    overrides = {"synthesizer.weights": weights, "expression": "surprised", "progress": False, **extra}
    if variant == "fast":
        config = run.load_process_config(overrides=overrides, preset=run.FAST_PRESET)
    else:
        config = run.load_process_config(overrides=overrides)
    return run.share_threads(config, os.cpu_count() or 1)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall seconds, process CPU seconds: every thread of this process, library pools included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def isolated_stages(run: Any, clip: Path, out: Path, config: Any, models: Any) -> dict[str, tuple[float, float]]:
    """{stage: (wall s, CPU s)} for each stage run alone on the clip's frames, one after the other."""
    info = run.probe_video(clip)
    times = {}
    frames, *times["decode"] = timed(lambda: list(run.decode_stage(clip, info.rotation)))
    tracked, *times["detect"] = timed(lambda: list(run.track_faces(frames, models.finder.detector, config.tracker)))
    mix = models.schedule.mix_at
    jobs, *times["align"] = timed(lambda: [run.plan_faces(frame, faces, mix(frame.time - info.start_time), config)
                                           for frame, faces in tracked])
    edited, *times["synthesize"] = timed(lambda: list(run.synthesize_stage(jobs, models.synthesizer,
                                                                           config.batch_size)))
    counts = run.RunCounts()
    blended, *times["blend"] = timed(lambda: list(run.blend_stage(edited, models.mask, config, info.rotation, counts)))
    encoder = run.encoder_config(config, out)
    _, *times["encode"] = timed(lambda: run.encode_video(blended, clip, out, encoder, info))
    return {stage: (wall, cpu) for stage, (wall, cpu) in times.items()}


def worker(args: argparse.Namespace) -> None:
    """Measure one variant in this process; print one JSON line."""
    run = checkout_pipeline(args.repo)
    config = worker_config(run, args.variant, str(args.weights), json.loads(args.overrides))
    (models, load_s, _) = timed(lambda: run.load_models(config))
    best: dict[str, Any] = {"load_s": load_s, "frames": 0, "stages": {}, "e2e_s": float("inf")}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as folder:
        for _ in range(args.rounds):
            for stage, (wall, cpu) in isolated_stages(run, args.clip, Path(folder) / "stages.mp4", config,
                                                      models).items():
                if wall < best["stages"].get(stage, (float("inf"), 0))[0]:
                    best["stages"][stage] = (wall, cpu)
            result, wall, cpu = timed(lambda: run.process_video(args.clip, Path(folder) / "e2e.mp4", config, models))
            if result.seconds < best["e2e_s"]:
                best.update(e2e_s=result.seconds, e2e_cpu_s=cpu, frames=result.frames, busy=result.stage_seconds)
    best["threads"] = {"detector": config.detector.threads, "generator": config.synthesizer.threads}
    print(RESULT_TAG + json.dumps(best), flush=True)


def render_worker(args: argparse.Namespace) -> None:
    """Write the variant's output for the quality comparison (in this checkout, models loaded here)."""
    run = checkout_pipeline(args.repo)
    config = worker_config(run, args.variant, str(args.weights), json.loads(args.overrides))
    run.process_video(args.clip, args.output, config)


# ---------------------------------------------------------------- driver


def spawn(args: argparse.Namespace, mode: str, variant: str, repo: Path, extra: list[str],
          weights: Path | None = None) -> str:
    """Run this script as a worker in a fresh process; returns its stdout (exits on failure)."""
    command = [sys.executable, __file__, mode, "--variant", variant, "--repo", str(repo), "--clip", str(args.clip),
               "--weights", str(weights or args.weights), "--rounds", str(args.rounds), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=repo)
    if done.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{done.stderr[-3000:]}")
    return done.stdout


def measure_variant(args: argparse.Namespace, variant: str, repo: Path, weights: Path) -> dict[str, Any]:
    stdout = spawn(args, "--worker", variant, repo, ["--overrides", "{}"], weights)
    line = next(line for line in stdout.splitlines() if line.startswith(RESULT_TAG))
    return json.loads(line[len(RESULT_TAG):])


def cli_run(args: argparse.Namespace, variant: str, repo: Path, weights: Path, output: Path) -> tuple[float, float]:
    """(wall seconds, the fps the CLI printed) of `python cli.py process` as a user runs it."""
    command = [sys.executable, str(repo / "cli.py"), "process", str(args.clip), "-e", "surprised", "--weights",
               str(weights), "-o", str(output), "--no-progress", *(["--fast"] if variant == "fast" else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=repo)
    wall = time.perf_counter() - started
    match = re.search(r"\(([\d.]+) fps\)", done.stdout)
    if done.returncode != 0 or not match:
        raise SystemExit(f"process failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    return wall, float(match.group(1))


def variant_list(args: argparse.Namespace) -> list[tuple[str, str, Path, Path]]:
    """(label, variant, checkout, weights) to measure."""
    items = [(name, name, bc.REPO, args.weights) for name in args.variants]
    if not args.before:
        return items
    before_weights = (args.before_weights or args.weights).expanduser().resolve()
    return [("before (" + args.before_label + ")", "default", args.before.resolve(), before_weights)] + items


def timing_part(args: argparse.Namespace) -> list[str]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_cli_") as folder:
        for index, (label, variant, repo, weights) in enumerate(variant_list(args)):
            results[label] = measure_variant(args, variant, repo, weights)
            results[label]["cli"] = cli_run(args, variant, repo, weights, Path(folder) / f"{index}_{variant}.mp4")
            logging.info("%s: %s", label, results[label])
    import bench_e2e_report as report

    parts = ["### End to end vs real time, and the bounding stage", report.summary_table(results)]
    for label, result in results.items():
        parts += [f"### Stages: {label}", report.stage_table(result)]
    return parts + [timing_notes()]


def timing_notes() -> str:
    return ("- Isolated stages run one after the other on frames held in memory, with the pipeline's own thread "
            "counts; \"busy s\" is each stage thread's wall time minus its queue waits inside the threaded run "
            "(waiting for a core counts as busy, so on a loaded machine busy times exceed the isolated ones).\n"
            "- Efficiency = end-to-end fps / slowest isolated stage fps (goal >= 0.8); real-time goal >= 1.0x. "
            "CPU-bound fps = cores / (sum of the stages' isolated CPU seconds per frame): when it is close to the "
            "end-to-end fps the cores, not one stage, are the limit.")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None, help="video (default: ../shared/media/video/d18.mp4)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="generator (default: the shipped weights, else a random-init 128² one; same speed)")
    parser.add_argument("--variants", nargs="+", default=["default", "fast"], choices=["default", "fast"])
    parser.add_argument("--before", type=Path, default=None, help="an older checkout whose default is measured too")
    parser.add_argument("--before-label", default="before", help="how the older checkout is named in the table")
    parser.add_argument("--before-weights", type=Path, default=None,
                        help="generator for the --before run (default: --weights'); --before . with other weights "
                             "compares two generators in this checkout")
    parser.add_argument("--parts", nargs="+", default=["timing", "presets"], choices=["timing", "presets"])
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds per variant")
    parser.add_argument("--recall-clips", nargs="+", default=list(RECALL_CLIPS))
    parser.add_argument("--note", default="", help="a line added to the sections (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=bc.REPO, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    import bench_e2e_report as report  # the report's tables and the presets part (it calls this script's workers)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args()
    if args.worker or args.render:
        return worker(args) if args.worker else render_worker(args)
    args.clip = (args.clip or bc.shared_clip("d18.mp4")).resolve()
    with tempfile.TemporaryDirectory(prefix="bench_e2e_w_") as folder:
        args.weights = (args.weights or bc.default_weights(Path(folder))).expanduser().resolve()
        weights_note = f"weights {args.weights.name} ({'random init, ' if 'random' in args.weights.name else ''}" \
                       "speed does not depend on the values)"
        note = "; ".join(filter(None, [args.note, weights_note]))
        if "timing" in args.parts:
            clock = bc.RunClock()
            body = bc.section(f"End to end: `process` on {args.clip.name}", bc.command_line(), clock,
                              timing_part(args), note)
            print(body)
            if not args.no_write:
                bc.write_section("e2e", body)
        if "presets" in args.parts:
            clock = bc.RunClock()
            body = bc.section("Presets: what the faster settings cost", bc.command_line(), clock,
                              report.presets_part(args), note)
            print(body)
            if not args.no_write:
                bc.write_section("presets", body)


if __name__ == "__main__":
    main()
