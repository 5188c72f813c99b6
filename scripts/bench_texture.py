#!/usr/bin/env python
"""What the expression texture step costs per face, against the generator's own time (goal: <= 10%).

Timed side by side, interleaved round by round on the same real faces (bench_geometry's players.jpg batch): the
generator alone (the torch synthesizer), the texture step's in-graph part (usgan.texture.TextureLayer: the maps
warped onto each face at the generator's size, the ratio and the donor mouth, at the crop's and the generator's
size), its CPU part (the canonical -> target field, solved with the warp's in one spline system, and the per-face weights, against
the warp's field alone), and the generator alone. The share is the median over rounds of the time the
texture adds (graph and CPU) over the generator alone's.

    .venv/bin/python scripts/bench_texture.py
    .venv/bin/python scripts/bench_texture.py --rounds 3 --no-write
"""

from __future__ import annotations

import statistics
from pathlib import Path

import bench_common as bc
import click
import numpy as np
import torch

from bench_geometry import GOAL, median_ms_per_face, players_photo, real_faces
from pipeline.faces.detector import DetectorConfig
from pipeline.geometry import blended_targets, crop_landmarks, load_geometry, warp_inputs
from pipeline.synthesize import TorchSynthesizer, to_model_input, torch_threads
from usgan.geometry import fit_expression, load_model
from usgan.inference import resize_to_generator
from usgan.texture import TextureLayer, face_weights, load_texture, mouth_opening
from usgan.tps import coarse_fields

SHIPPED_GEOMETRY = bc.REPO / "weights" / "geometry.safetensors"
SHIPPED_TEXTURE = bc.REPO / "weights" / "texture.safetensors"


def measure(batch: int, rounds: int, threads: int, weights: Path) -> tuple[dict[str, list[float]], int]:
    """Seconds per call of each side, every round; and how many faces' landmarks failed."""
    faces = real_faces(players_photo(), batch, threads)
    texture = load_texture(SHIPPED_TEXTURE)
    shapes = load_model(SHIPPED_GEOMETRY)
    geometry = load_geometry(shapes, DetectorConfig(threads=threads), texture)
    warp = warp_inputs(geometry, faces.aligned, faces.targets, faces.intensity, [0.0] * batch)
    points = crop_landmarks(geometry.landmarks, faces.aligned)
    fit = fit_expression(shapes, points)
    goal = torch.from_numpy(blended_targets(shapes, points, faces.targets, faces.intensity.astype(float), fit))
    canonical = torch.from_numpy(np.broadcast_to(texture.canonical, points.shape).astype(np.float64))

    def texture_cpu() -> None:
        coarse_fields([torch.from_numpy(points), canonical], goal)
        face_weights(texture, faces.targets, faces.intensity, fit.posterior, fit.confidence, mouth_opening(points),
                     mouth_opening(goal.numpy()), fit.validity)
    plain = TorchSynthesizer(weights, "cpu", threads)
    layer = TextureLayer(texture)
    x = torch.from_numpy(to_model_input(faces.crops))
    small = resize_to_generator(x, plain.image_size)
    inputs = [torch.from_numpy(a) for a in (warp.texture.fields, warp.texture.ratio, warp.texture.mouth)]

    def texture_graph() -> None:
        with torch.no_grad(), torch_threads(threads):
            layer(x, small, *inputs)
    calls = {
        "generator": lambda: plain.synthesize(faces.crops, faces.targets, faces.intensity),
        "texture step (graph)": texture_graph,
        "warp field (CPU)": lambda: coarse_fields([torch.from_numpy(points)], goal),
        "warp+texture fields and weights (CPU)": texture_cpu,
    }
    return bc.interleaved_times(calls, rounds, warmup=1), int(warp.failed.sum())


def share(times: dict[str, list[float]]) -> float:
    """Median over rounds of the texture step's time (graph + CPU part) over the generator's."""
    sides = ("texture step (graph)", "warp+texture fields and weights (CPU)", "warp field (CPU)", "generator")
    return statistics.median((graph + cpu - cpu_warp) / generator
                             for graph, cpu, cpu_warp, generator in zip(*(times[s] for s in sides)))


@click.command()
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 64), help="Faces per call.")
@click.option("--rounds", default=15, show_default=True, type=click.IntRange(1), help="Interleaved rounds.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1), help="torch and BLAS threads.")
@click.option("--weights", default=bc.REPO / "weights" / "usgan_tfeid.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--note", default="", help="A line added to the section (e.g. what else ran).")
@click.option("--no-write", is_flag=True, help="Print only; leave docs/BENCHMARKS.md alone.")
def main(batch: int, rounds: int, threads: int, weights: Path, note: str, no_write: bool) -> None:
    """Time the texture step against the generator per face (see the module docstring)."""
    clock = bc.RunClock()
    torch.set_num_threads(threads)
    with bc.blas_threads(threads):
        times, failed = measure(batch, rounds, threads, weights)
    rows = [(name, f"{median_ms_per_face(values, batch):.2f}") for name, values in times.items()]
    ratio = share(times)
    parts = ["| measured | ms per face (median) |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows),
             f"The texture step's share of the generator's time: **{100 * ratio:.1f}%** (goal <= {100 * GOAL:.0f}%; "
             f"median over {rounds} rounds of that round's added time, in the graph and on the CPU, over the "
             "generator's).",
             f"{batch} faces of players.jpg at {CROP_NOTE}, {threads} threads for torch and BLAS; "
             f"{failed} faces without landmarks; weights `{weights.name}`."]
    body = bc.section("Texture: the texture step's cost per face", bc.command_line(), clock, parts, note)
    click.echo(body)
    if not no_write:
        bc.write_section("texture", body)


CROP_NOTE = "the product's crop size (256 px)"

if __name__ == "__main__":
    main()
