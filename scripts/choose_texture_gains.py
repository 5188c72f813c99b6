#!/usr/bin/env python
"""Choose the texture step's gains, and the generator's gain on textured input, on training people only.

For every source crop and every target of angry, happy, sad and surprised: the crop is warped (the shipped shape
model), textured at each candidate texture gain, and judged (fer: is the target named; ArcFace: identity to the
source). With --warp-scales, each texture gain is tried with the target's warp scaled by each of them too
(FitSettings.scales: a multiple of the target's mean displacement), and with --inner-brows with the vertical
move of the brows' inner halves scaled by each of them (FitSettings.inner_brows; negative reverses it). Per target,
the chosen combination is the strongest whose mean identity stays at or above --min-identity. Then the generator
runs on the chosen textured crops at each candidate generator gain, judged the same way, and per target the
strongest gain above --min-identity-generator is reported. The people must be ones the shape and texture models
were built from (never the held-out ones); the held-out sets measure the choice once.

    .venv/bin/python scripts/choose_texture_gains.py ~/.cache/usgan/data/faces/256 --identities 01,05,10,21,001,002,003
    .venv/bin/python scripts/choose_texture_gains.py ~/.cache/usgan/data/faces/256 \
        --identities 01,05,10,21,001,002,003 --targets sad --inner-brows 1,0,-1 --texture-gains 2,3
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.evaluation.conditions import Geometry, fit_faces, textured
from pipeline.evaluation.judges import ExpressionJudge, IdentityJudge, cosine_similarity
from pipeline.evaluation.sources import bgr_to_tensor, read_crops, select_sources, tensor_to_bgr
from pipeline.faces.align import crop_template
from pipeline.faces.landmarks import LandmarkDetector
from usgan.checkpoint import load_generator
from usgan.dataset import parse_identities
from usgan.expressions import EXPRESSIONS, UnknownExpressionError, parse_expression
from usgan.geometry import load_model, target_landmarks, with_settings
from usgan.inference import apply_generator
from usgan.texture import load_texture
from usgan.tps import warp_crops

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("angry", "happy", "sad", "surprised")


def floats(values: str) -> list[float]:
    """A comma-separated list of numbers."""
    return [float(value) for value in values.split(",")]


def judged(judges: tuple[ExpressionJudge, IdentityJudge], crops: list, outputs: list,
           target: str) -> tuple[float, float]:
    """(share of outputs the fer judge names as target, mean ArcFace cosine to the crops)."""
    expression, identity = judges
    landmarks = [crop_template(crops[0].shape[0]).astype(np.float32)] * len(crops)
    named = expression.predict_batch(outputs, landmarks).argmax(1) == EXPRESSIONS.index(target)
    cosine = cosine_similarity(identity.embed_batch(crops, landmarks), identity.embed_batch(outputs, landmarks))
    return float(named.mean()), float(cosine.mean())


def strongest(rows: dict, floor: float):
    """The key (a gain, or a (warp scale, inner brows, gain) triple) with the best judge rate among those whose
    identity is at least floor, ties going to the higher identity; the key of the highest identity if none is."""
    allowed = [key for key, (_, identity) in rows.items() if identity >= floor]
    if not allowed:
        return max(rows, key=lambda key: rows[key][1])
    return max(allowed, key=lambda key: rows[key])


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--identities", required=True, help="Training people, comma-separated (never held-out ones).")
@click.option("--limit", default=48, show_default=True, type=click.IntRange(1), help="At most this many sources.")
@click.option("--texture", "texture_path", default=REPO / "weights" / "texture.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", default=REPO / "weights" / "usgan_tfeid.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--targets", default=",".join(TARGETS), show_default=True, help="The targets to choose for.")
@click.option("--texture-gains", default="1,1.5,2,2.5,3,4", show_default=True)
@click.option("--warp-scales", default="1", show_default=True, help="Multiples of the target's warp to try.")
@click.option("--inner-brows", default="1", show_default=True,
              help="Multiples of the vertical move of the brows' inner halves to try (negative: the other way).")
@click.option("--generator-gains", default="0.25,0.5,0.75,1", show_default=True)
@click.option("--min-identity", default=0.80, show_default=True, type=float)
@click.option("--min-identity-generator", default=0.77, show_default=True, type=float)
def main(data: Path, identities: str, limit: int, texture_path: Path, weights: Path, targets: str, texture_gains: str,
         warp_scales: str, inner_brows: str, generator_gains: str, min_identity: float,
         min_identity_generator: float) -> None:
    """Print, per target, the judge rate and identity at each gain and the chosen gains (JSON on the last line)."""
    chosen_targets, unknown = [], []
    for name in targets.split(","):
        try:
            chosen_targets.append(parse_expression(name))
        except UnknownExpressionError:
            unknown.append(name)
    if unknown:
        raise click.BadParameter(f"not an expression: {', '.join(unknown)}", param_hint="--targets")
    samples = select_sources(data, parse_identities(identities), limit)
    crops = read_crops(samples)
    texture = load_texture(texture_path)
    geometry = Geometry(texture_path, load_model(REPO / "weights" / "geometry.safetensors"), LandmarkDetector(),
                        1.0, texture)
    faces = fit_faces(geometry, crops)
    generator, info = load_generator(weights)
    judges = (ExpressionJudge(), IdentityJudge())
    x = bgr_to_tensor(crops)
    chosen: dict[str, dict[str, float]] = {}
    for target in chosen_targets:
        names = [target] * len(crops)
        by_texture, images = {}, {}
        for scale, brows in itertools.product(floats(warp_scales), floats(inner_brows)):
            model = with_settings(geometry.model, scales={target: scale}, inner_brows={target: brows})
            goal = target_landmarks(model, faces.points, names, fit=faces.fit)
            warped = warp_crops(x, torch.from_numpy(faces.points), torch.from_numpy(goal).float())
            for gain in floats(texture_gains):
                key = scale, brows, gain
                shaded = replace(geometry, model=model, texture=replace(texture, gains={target: gain}))
                images[key] = textured(shaded, warped, faces, goal, names)
                by_texture[key] = judged(judges, crops, tensor_to_bgr(images[key]), target)
                click.echo(f"{target} warp scale {scale:g} inner brows {brows:g} texture gain {gain:g}: "
                           f"judge {by_texture[key][0]:.2f} identity {by_texture[key][1]:.3f}")
        best = strongest(by_texture, min_identity)
        by_generator = {}
        for gain in floats(generator_gains):
            edited = apply_generator(generator, replace(info, edit_gain=gain, expression_gains={}),
                                     images[best], names)
            by_generator[gain] = judged(judges, crops, tensor_to_bgr(edited), target)
            click.echo(f"{target} + generator gain {gain:g}: judge {by_generator[gain][0]:.2f} "
                       f"identity {by_generator[gain][1]:.3f}")
        chosen[target] = {"warp_scale": best[0], "inner_brows": best[1], "texture": best[2],
                          "generator": strongest(by_generator, min_identity_generator)}
    click.echo(json.dumps(chosen))


if __name__ == "__main__":
    main()
