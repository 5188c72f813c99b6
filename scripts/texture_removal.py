#!/usr/bin/env python
"""How much taking a source's own expression texture out helps: warp + texture on sources that already show an
expression, towards every other target of angry, happy, sad and surprised, with the source's estimated texture
removed (the product) and left in (the fit's posterior ignored by the texture step; the warp is the same).

    .venv/bin/python scripts/texture_removal.py ~/.cache/usgan/data/faces/256 --identities 16,17,30
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from choose_texture_gains import TARGETS, judged
from pipeline.evaluation.conditions import Geometry, fit_faces, textured
from pipeline.evaluation.judges import ExpressionJudge, IdentityJudge
from pipeline.evaluation.sources import bgr_to_tensor, read_crops, select_sources, tensor_to_bgr
from pipeline.faces.landmarks import LandmarkDetector
from usgan.dataset import parse_identities
from usgan.geometry import load_model, target_landmarks
from usgan.texture import load_texture
from usgan.tps import warp_crops

REPO = Path(__file__).resolve().parents[1]


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--identities", required=True, help="Held-out people, comma-separated.")
@click.option("--limit", default=80, show_default=True, type=click.IntRange(1))
def main(data: Path, identities: str, limit: int) -> None:
    """Print judge rate and identity per target, with and without the removal, over expressive sources."""
    samples = [s for s in select_sources(data, parse_identities(identities), None)
               if s.expression != "neutral"][:limit]
    geometry = Geometry(REPO / "weights" / "texture.safetensors", load_model(REPO / "weights" / "geometry.safetensors"),
                        LandmarkDetector(), 1.0, load_texture(REPO / "weights" / "texture.safetensors"))
    judges = (ExpressionJudge(), IdentityJudge())
    totals = {"removed": [], "kept": []}
    for target in TARGETS:
        chosen = [s for s in samples if s.expression != target]
        crops = read_crops(chosen)
        faces = fit_faces(geometry, crops)
        names = [target] * len(crops)
        goal = target_landmarks(geometry.model, faces.points, names, fit=faces.fit)
        warped = warp_crops(bgr_to_tensor(crops), torch.from_numpy(faces.points), torch.from_numpy(goal).float())
        blind = replace(faces, fit=replace(faces.fit, posterior=np.zeros_like(faces.fit.posterior)))
        for name, fitted in (("removed", faces), ("kept", blind)):
            rate, identity = judged(judges, crops, tensor_to_bgr(textured(geometry, warped, fitted, goal, names)),
                                    target)
            totals[name].append((rate, identity, len(crops)))
            click.echo(f"{target} ({len(crops)} sources), source texture {name}: judge {rate:.2f} identity {identity:.3f}")
    for name, rows in totals.items():
        weights = np.array([n for *_, n in rows], float)
        click.echo(f"mean over targets, source texture {name}: judge {np.mean([r for r, *_ in rows]):.3f}, identity "
                   f"{np.average([i for _, i, _ in rows], weights=weights):.3f}")
    click.echo(f"sources: {len(samples)} expressive photos ({', '.join(sorted({s.expression for s in samples}))})")


if __name__ == "__main__":
    main()
