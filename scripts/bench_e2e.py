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
    parts = ["### End to end vs real time, and the bounding stage", summary_table(results)]
    for label, result in results.items():
        parts += [f"### Stages: {label}", stage_table(result)]
    return parts + [timing_notes()]


def derived(result: dict[str, Any]) -> dict[str, Any]:
    """fps figures and the bounding stage from one worker's measurements."""
    frames = result["frames"]
    stage_fps = {stage: frames / wall for stage, (wall, _) in result["stages"].items()}
    cpu_per_frame = sum(cpu for _, cpu in result["stages"].values()) / frames
    e2e = frames / result["e2e_s"]
    slowest = min(stage_fps, key=stage_fps.get)
    return {"e2e": e2e, "stage_fps": stage_fps, "slowest": slowest, "efficiency": e2e / stage_fps[slowest],
            "cpu_ms": 1000 * cpu_per_frame, "cpu_bound": (os.cpu_count() or 1) / cpu_per_frame}


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for label, result in results.items():
        d = derived(result)
        wall, cli_fps = result["cli"]
        rows.append((label, f"{d['e2e']:.1f}", f"{d['e2e'] / REAL_TIME_FPS:.2f}x",
                     f"{STAGE_LABELS.get(d['slowest'], d['slowest'])} {d['stage_fps'][d['slowest']]:.1f}",
                     f"{d['efficiency']:.2f}", f"{d['cpu_ms']:.1f}", f"{d['cpu_bound']:.1f}",
                     f"{cli_fps:.1f} / {wall:.1f} s", f"{result['load_s']:.1f}"))
    header = ["variant", "end-to-end fps", "vs real time (30 fps)", "slowest stage (isolated fps)", "efficiency",
              "CPU ms/frame (all stages)", "CPU-bound fps", "CLI: printed fps / wall incl. start-up",
              "model load s"]
    return bc.table(header, rows)


def stage_table(result: dict[str, Any]) -> str:
    frames, d = result["frames"], derived(result)
    rows = []
    for stage in STAGES:
        wall, cpu = result["stages"][stage]
        busy = result["busy"].get(stage, 0.0)
        rows.append((STAGE_LABELS.get(stage, stage), f"{frames / wall:.1f}", f"{1000 * cpu / frames:.1f}",
                     f"{busy:.2f}", f"{frames / busy:.1f}" if busy > 0 else "-"))
    rows.append(("**end to end**", f"{d['e2e']:.1f}", f"{1000 * result['e2e_cpu_s'] / frames:.1f}",
                 f"{result['e2e_s']:.2f} (wall)", ""))
    threads = result.get("threads", {})
    return (bc.table(["stage", "isolated fps", "isolated CPU ms/frame", "busy s in the pipeline",
                      "fps from busy s"], rows)
            + f"\n\n{frames} frames; threads: detector {threads.get('detector')}, "
            f"generator {threads.get('generator')}.")


def timing_notes() -> str:
    return ("- Isolated stages run one after the other on frames held in memory, with the pipeline's own thread "
            "counts; \"busy s\" is each stage thread's wall time minus its queue waits inside the threaded run "
            "(waiting for a core counts as busy, so on a loaded machine busy times exceed the isolated ones).\n"
            "- Efficiency = end-to-end fps / slowest isolated stage fps (goal >= 0.8); real-time goal >= 1.0x. "
            "CPU-bound fps = cores / (sum of the stages' isolated CPU seconds per frame): when it is close to the "
            "end-to-end fps the cores, not one stage, are the limit.")


# ---------------------------------------------------------------- presets: what the faster settings cost


def presets_part(args: argparse.Namespace) -> list[str]:
    decode_video = checkout_pipeline(bc.REPO).decode_video
    with tempfile.TemporaryDirectory(prefix="bench_e2e_q_") as folder:
        out = Path(folder)
        renders = {name: render(args, variant, json.dumps({"encoder.crf": 0, **overrides}), out / f"{n}.mp4")
                   for n, (name, variant, overrides) in enumerate(QUALITY_VARIANTS)}
        rows = [("default vs the input (the edit itself)", *video_psnr(decode_video, renders["default"], args.clip))]
        rows += [(f"{name} vs default", *video_psnr(decode_video, path, renders["default"]))
                 for name, path in renders.items() if name != "default"]
    table = bc.table(["output", "PSNR dB (whole clip)", "worst frame dB"],
                     [(n, f"{m:.1f}", f"{w:.1f}") for n, m, w in rows])
    return ["### Quality cost of the presets (PSNR against the default's output)", table,
            f"- {args.clip.name}, weights {args.weights.name}; outputs encoded losslessly (CRF 0) except the "
            "'CRF 18' row, which shows what the default encoder setting itself changes. The first row is the size "
            "of the edit itself, against which the other differences are small or not.",
            "### Faces found with the --fast detector settings (shared clips)", recall_table(args)]


def render(args: argparse.Namespace, variant: str, overrides: str, output: Path) -> Path:
    spawn(args, "--render", variant, bc.REPO, ["--overrides", overrides, "--output", str(output)])
    return output


def video_psnr(decode: Callable, path: Path, reference: Path) -> tuple[float, float]:
    """(whole clip, worst frame) PSNR in dB of path against reference; the whole clip's pools the squared error of
    every frame (a mean of per-frame PSNRs would let identical frames hide the others)."""
    import numpy as np

    errors = [float(np.mean((a.image.astype(np.float64) - b.image.astype(np.float64)) ** 2))
              for a, b in zip(decode(path), decode(reference))]
    db = lambda mse: 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")  # noqa: E731
    return db(float(np.mean(errors))), db(max(errors))


def recall_table(args: argparse.Namespace) -> str:
    """Per shared clip: frames with a face by default, the share --fast also finds, and the landmark difference."""
    rows = []
    for name in args.recall_clips:
        clip = bc.SHARED / "media" / "video" / name
        if clip.is_file():
            rows.append((name, *compare_detection(clip)))
    return bc.table(["clip", "frames", "frames with a face (default)", "found by --fast", "recall",
                     "mean landmark difference (face sizes)"], rows)


def compare_detection(clip: Path) -> tuple[int, int, int, str, str]:
    import numpy as np

    run = checkout_pipeline(bc.REPO)
    tracked = []
    for preset in (None, run.FAST_PRESET):
        config = run.load_process_config(preset=preset, overrides={"detector.threads": 1})
        tracked.append([faces for _, faces in run.track_faces(run.decode_video(clip), run.FaceDetector(config.detector),
                                                              config.tracker)])
    with_face = [(a, b) for a, b in zip(*tracked) if a]
    found = [(a, b) for a, b in with_face if b]
    error = [np.linalg.norm(a[0].landmarks - b[0].landmarks, axis=1).mean() / run.face_size(a[0])
             for a, b in found]
    recall = len(found) / len(with_face) if with_face else 1.0
    return (len(tracked[0]), len(with_face), len(found), f"{recall:.3f}",
            f"{np.mean(error):.4f}" if error else "-")


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
                              presets_part(args), note)
            print(body)
            if not args.no_write:
                bc.write_section("presets", body)


if __name__ == "__main__":
    main()
