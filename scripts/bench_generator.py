#!/usr/bin/env python
"""Generator throughput (faces/s) per back-end and batch size, and bulk `convert`, against the paper's test loop.

The reference loop does what the official US-GAN (StarGAN) test script does: one image at a time (batch 1), read with
PIL, resized and normalised with torchvision, the 128² generator in torch, then denorm + torchvision's save_image for
every image. It runs in the same process, in rounds interleaved with the `convert` runs (best of each), so the ratios
hold on a busy machine. `convert` runs as users run it (`python cli.py convert ...`, a subprocess) on all the photos
and on a quarter of them; its rate is the marginal one, (all - quarter) / (wall for all - wall for the quarter), so
Python start-up and model loading cancel out as they do for the in-process reference (both walls are reported too).

Generators are randomly initialised at the real (paper) size and saved like shipped weights: speed does not depend on
the weight values. --weights uses a real file instead (for its own image size).

    .venv/bin/python scripts/bench_generator.py
    .venv/bin/python scripts/bench_generator.py --sizes 64 --batches 1 8 --rounds 1 --no-write
    .venv/bin/python scripts/bench_generator.py --before /tmp/before --before-label dbd019a   # older code's convert too
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_common as bc
import numpy as np
import torch

from pipeline.config import OnnxConfig
from pipeline.synthesize import OnnxSynthesizer, TorchSynthesizer, bf16_native
from usgan.checkpoint import load_generator
from usgan.expressions import EXPRESSIONS, one_hot

IMAGE_FOLDERS = (Path("~/.cache/usgan/data/tfeid/256").expanduser(), bc.SHARED / "data" / "tfeid" / "faces_256x256")
VARIANT_FLAGS = {"default": [], "fast": ["--fast"]}
REFERENCE_SIZE = 128  # the paper's test resolution


# ---------------------------------------------------------------- inputs


def face_images(folder: Path | None, count: int) -> list[Path]:
    """`count` face photos: aligned TFEID crops from prepare-data, else the shared TFEID photos (sorted, spread)."""
    folders = [folder] if folder else [f for f in IMAGE_FOLDERS if f.is_dir()]
    for candidate in folders:
        files = sorted(p for p in candidate.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(files) >= count:
            step = len(files) // count
            return files[::step][:count]
    raise SystemExit(f"no folder with {count} face images among {', '.join(map(str, folders))}")


def copy_inputs(files: list[Path], folder: Path) -> Path:
    """The photos copied to a temporary folder (convert reads a folder; never anything inside the repo)."""
    folder.mkdir(parents=True)
    for n, path in enumerate(files):
        shutil.copy(path, folder / f"{n:03d}{path.suffix.lower()}")
    return folder


def crops_at(files: list[Path], size: int, count: int) -> np.ndarray:
    """(count, size, size, 3) uint8 BGR face crops (the photos resized, cycled)."""
    import cv2

    images = [cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_AREA) for p in files]
    return np.stack([images[n % len(images)] for n in range(count)])


def weights_for(sizes: list[int], folder: Path, given: Path | None) -> dict[int, Path]:
    """A generator file per image size: --weights for its own size, random-init files for the others."""
    paths = {size: bc.random_generator_file(folder, size) for size in sizes}
    if given is not None:
        _, info = load_generator(given)
        paths[info.image_size] = given
    return paths


# ---------------------------------------------------------------- generator back-ends


@dataclass(frozen=True)
class Backend:
    name: str
    build: Callable[[Path], object]


def backends(cache: Path) -> tuple[list[Backend], list[str]]:
    """The back-ends this machine can run, and notes on those it cannot."""
    rows = [Backend("torch CPU fp32", lambda w: TorchSynthesizer(w, "cpu")),
            Backend("ONNX Runtime CPU fp32", lambda w: OnnxSynthesizer(w, OnnxConfig("cpu", False, str(cache))))]
    notes = []
    if bf16_native("cpu"):
        rows.insert(1, Backend("torch CPU bf16", lambda w: TorchSynthesizer(w, "cpu", precision="bf16")))
    else:
        notes.append("torch CPU bf16 skipped: this CPU has no native bfloat16 (AVX512-BF16/AMX).")
    if torch.cuda.is_available():
        rows += [Backend("torch CUDA fp32", lambda w: TorchSynthesizer(w, "cuda")),
                 Backend("torch CUDA bf16", lambda w: TorchSynthesizer(w, "cuda", precision="bf16")),
                 Backend("ONNX Runtime CUDA fp16", lambda w: OnnxSynthesizer(w, OnnxConfig("cuda", True, str(cache)))),
                 Backend("ONNX Runtime TensorRT fp16",
                         lambda w: OnnxSynthesizer(w, OnnxConfig("tensorrt", True, str(cache))))]
    else:
        notes.append("CUDA and TensorRT rows skipped: no GPU on this machine.")
    return rows, notes


def faces_per_second(synthesizer, crops: np.ndarray, budget_s: float) -> float:
    """Best faces/s of synthesize() on this batch, repeated to fill about budget_s (at least twice)."""
    targets = np.eye(len(EXPRESSIONS), dtype=np.float32)[np.arange(len(crops)) % len(EXPRESSIONS)]
    intensity = np.ones(len(crops), np.float32)
    call = lambda: synthesizer.synthesize(crops, targets, intensity)  # noqa: E731
    started = time.perf_counter()
    call()  # warm-up (also builds TensorRT engines and oneDNN kernels)
    repeats = max(2, min(20, math.ceil(budget_s / max(time.perf_counter() - started, 1e-3))))
    return len(crops) / bc.best_seconds(call, repeats, warmup=0)


def generator_rows(weights: dict[int, Path], files: list[Path], batches: list[int], cache: Path,
                   budget_s: float) -> tuple[list[tuple[str, int, int, float]], list[str]]:
    """(back-end, image size, batch, faces/s) for every back-end, size and batch."""
    rows, (available, notes) = [], backends(cache)
    for size, path in weights.items():
        for backend in available:
            synthesizer = backend.build(path)
            for batch in batches:
                rate = faces_per_second(synthesizer, crops_at(files, size, batch), budget_s)
                rows.append((backend.name, size, batch, rate))
                logging.info("%s %d² batch %d: %.1f faces/s", backend.name, size, batch, rate)
    return rows, notes


# ---------------------------------------------------------------- the paper's test loop


def reference_loop(files: list[Path], weights: Path, out_dir: Path) -> Callable[[], None]:
    """One pass of the official test script's work: per image PIL load, transforms, G at 128², denorm, save_image."""
    import torchvision.transforms as T
    from PIL import Image
    from torchvision.utils import save_image

    generator, info = load_generator(weights)
    transform = T.Compose([T.Resize(info.image_size), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    target = torch.from_numpy(one_hot("happy")).float()[None]
    out_dir.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        with torch.no_grad():
            for n, path in enumerate(files):
                x = transform(Image.open(path).convert("RGB"))[None]
                fake = generator(x, target)
                save_image(((fake + 1) / 2).clamp_(0, 1), out_dir / f"{n:03d}.png", nrow=1, padding=0)
    return run


# ---------------------------------------------------------------- bulk convert through the CLI


def convert_seconds(cli: Path, in_dir: Path, out_dir: Path, weights: Path, flags: list[str]) -> float:
    """Wall seconds of `python cli.py convert IN OUT -e happy --weights W FLAGS` (a subprocess; every file done)."""
    command = [sys.executable, str(cli), "convert", str(in_dir), str(out_dir), "-e", "happy", "--weights",
               str(weights), *flags]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cli.parent, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    manifest = out_dir / "manifest.json"
    if done.returncode != 0 or not manifest.is_file():
        raise SystemExit(f"convert failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    if any(entry["status"] != "done" for entry in json.loads(manifest.read_text())["files"].values()):
        raise SystemExit(f"convert did not process every file: see {manifest}")
    return wall


def convert_jobs(args: argparse.Namespace, weights: dict[int, Path]) -> dict[str, tuple[Path, list[str], Path]]:
    """{row label: (cli.py, flags, weights)} for every variant and size, an older checkout's first."""
    jobs = {f"{variant} @ {size}²": (args.cli, VARIANT_FLAGS[variant], weights[size])
            for variant in args.variants for size in args.sizes}
    if args.before:
        before = {f"default @ {size}², before ({args.before_label})": (args.before / "cli.py", [], weights[size])
                  for size in args.sizes}
        jobs = {**before, **jobs}
    return jobs


def convert_rows(args: argparse.Namespace, files: list[Path], folders: tuple[Path, Path], work: Path,
                 weights: dict[int, Path]) -> list[tuple[str, float, float, float]]:
    """(label, images/s, wall s for all files incl. start-up, images/s incl. start-up); the reference first.

    convert's own rate is marginal: (all - few files) / (wall for all - wall for few), so Python start-up, model
    loading and warm-up cancel out, as they are left out of the reference loop's time. Rounds run the reference and
    every convert in turn; each keeps its best (lowest) wall time.
    """
    reference = reference_loop(files, weights[REFERENCE_SIZE], work / "reference")
    reference()  # warm-up: first-call allocations, file cache
    jobs = convert_jobs(args, weights)
    best: dict[tuple[str, int], float] = {}
    for round_index in range(args.rounds):
        best[("reference", 0)] = min(best.get(("reference", 0), math.inf), bc.best_seconds(reference, 1, 0))
        for n, (label, (cli, flags, path)) in enumerate(jobs.items()):
            for size, folder in enumerate(folders):
                wall = convert_seconds(cli, folder, work / f"out-{round_index}-{n}-{size}", path, flags)
                best[(label, size)] = min(best.get((label, size), math.inf), wall)
    few, count = len(list(folders[0].iterdir())), len(files)
    rate = count / best[("reference", 0)]
    rows = [(f"reference: paper's test loop, torch, batch 1, {REFERENCE_SIZE}²", rate, best[("reference", 0)], rate)]
    for label in jobs:
        marginal = (count - few) / (best[(label, 1)] - best[(label, 0)])
        rows.append((f"convert {label}", marginal, best[(label, 1)], count / best[(label, 1)]))
    return rows


# ---------------------------------------------------------------- report


def generator_table(rows: list[tuple[str, int, int, float]], reference_rate: float) -> str:
    body = [(name, f"{size}²", batch, f"{rate:.1f}", f"{rate / reference_rate:.2f}x")
            for name, size, batch, rate in rows]
    return bc.table(["back-end", "model", "batch", "faces/s", "vs reference loop"], body)


def convert_table(rows: list[tuple[str, float, float, float]], count: int) -> str:
    reference = rows[0][1]
    body = [(label, f"{rate:.1f}", f"{rate / reference:.2f}x", f"{wall:.1f}", f"{with_start:.1f}")
            for label, rate, wall, with_start in rows]
    return bc.table(["run", "images/s", "vs reference", f"wall s for {count} (incl. start-up)",
                     "images/s incl. start-up"], body)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=None, help="folder of face photos (default: TFEID crops)")
    parser.add_argument("--count", type=int, default=64, help="photos per convert / reference pass (a quarter "
                        "of them for the short convert run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="generator image sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved reference/convert rounds (best kept)")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of repeats per generator measurement")
    parser.add_argument("--weights", type=Path, default=None, help="a real generator file (speed is the same)")
    parser.add_argument("--variants", nargs="+", default=["default", "fast"], choices=list(VARIANT_FLAGS))
    parser.add_argument("--cli", type=Path, default=bc.REPO / "cli.py", help="the cli.py whose convert is timed")
    parser.add_argument("--before", type=Path, default=None, help="an older checkout whose convert is timed too")
    parser.add_argument("--before-label", default="before", help="how the older checkout is named in the table")
    parser.add_argument("--note", default="", help="a line added to the section (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    if REFERENCE_SIZE not in args.sizes:
        args.sizes.append(REFERENCE_SIZE)  # the reference loop needs the 128² generator
    return args


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args()
    clock = bc.RunClock()
    files = face_images(args.images, args.count)
    with tempfile.TemporaryDirectory(prefix="bench_generator_") as folder:
        work = Path(folder)
        weights = weights_for(args.sizes, work / "weights", args.weights)
        folders = (copy_inputs(files[:max(1, args.count // 4)], work / "in-few"), copy_inputs(files, work / "in"))
        converts = convert_rows(args, files, folders, work, weights)
        generators, notes = generator_rows(weights, files, args.batches, work / "onnx", args.budget)
    reference_rate = converts[0][1]
    folder = files[0].parent.parent if files[0].parent.name in EXPRESSIONS else files[0].parent
    source = f"{len(files)} face photos from {str(folder).replace(str(Path.home()), '~')}"
    weights_note = (f"weights: {args.weights.name}" if args.weights
                    else "weights: randomly initialised generators of the paper's size")
    notes = [f"{source}; {weights_note}; torch threads {torch.get_num_threads()}.",
             "Generator rows time FaceSynthesizer.synthesize (uint8 crops at the model's size in and out); "
             "the ratio divides by the reference loop's images/s, which also reads and writes files.",
             f"convert's images/s = ({len(files)} - {max(1, args.count // 4)}) / (wall for {len(files)} files - wall "
             f"for {max(1, args.count // 4)}): start-up, model loading and warm-up cancel out as in the reference's "
             "in-process loop. The last two columns include them (Python start-up, imports, model loading).", *notes,
             "Goal: bulk convert >= 2x the reference per generated image."]
    parts = ["### Generator back-ends (faces/s)", generator_table(generators, reference_rate),
             "### Bulk `convert` vs the paper's test loop (per generated image)", convert_table(converts, len(files)),
             "\n".join(f"- {line}" for line in notes)]
    body = bc.section("Generator and bulk convert", bc.command_line(), clock, parts, args.note)
    print(body)
    if not args.no_write:
        bc.write_section("generator", body)


if __name__ == "__main__":
    main()
