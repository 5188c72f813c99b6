"""scripts/bench_e2e.py's report: the timing part's tables, and the "presets" part (what the faster settings cost:
PSNR of each variant's output against the default's, all encoded losslessly, and the faces the --fast detector
settings find on the shared clips)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as bc
from bench_e2e import QUALITY_VARIANTS, REAL_TIME_FPS, STAGE_LABELS, STAGES, checkout_pipeline, spawn


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
