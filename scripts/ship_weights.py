"""Turn a training checkpoint into a shippable generator file: fp16, data set, licence, recipe notes, edit gain.

This is how `weights/usgan_tfeid.safetensors` is made (weights/MODEL_CARD.md has the recipe and the evaluation
that chose the step and the edit gain). Calibrate the gain first with `cli.py evaluate --edit-gain G`. Given
several checkpoints of one run, it ships the mean of their generators (iterate averaging); evaluate the average
first: write it with --fp32 to a scratch file and pass that to `cli.py evaluate --weights`.

Example:
    python scripts/ship_weights.py ~/.cache/usgan/runs/tfeid_128/checkpoints/step_00004400.safetensors \\
        weights/usgan_tfeid.safetensors --edit-gain 1.1 --expression-gain angry=1 --expression-gain happy=1.25 \\
        --dataset tfeid --validation 16,17,30 --recipe "configs/train/tfeid_128.yaml, docs/TRAINING.md"
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from usgan.checkpoint import (
    DEFAULT_LICENSE, MAX_EDIT_GAIN, WeightsInfo, average_generators, gain_text, parse_expression_gains,
    refuse_overwrite, save_generator,
)
from usgan.dataset import parse_identities
from usgan.errors import UserError


def ship(checkpoints: list[Path], out: Path, edit_gain: float, dataset: str, recipe: str,
         validation: tuple[str, ...], trained_on: str, fp16: bool = True,
         expression_gains: dict[str, float] | None = None, geometry: str = "", texture: str = "",
         refine_gains: dict[str, float] | None = None) -> WeightsInfo:
    """Write the checkpoints' (mean) generator to out (atomically) with a header for users; returns that header."""
    for checkpoint in checkpoints:
        refuse_overwrite(checkpoint, out)
    generator, info = average_generators(checkpoints)
    notes = {**info.notes, "source": checkpoints[-1].name, "recipe": recipe, "trained_on": trained_on,
             "validation_identities": list(validation)}
    info = dataclasses.replace(info, dataset=dataset, license=DEFAULT_LICENSE, edit_gain=edit_gain,
                               expression_gains=dict(expression_gains or {}), geometry=geometry, texture=texture,
                               refine_gains=dict(refine_gains or {}),
                               notes={k: v for k, v in notes.items() if v})
    save_generator(out, generator, info, fp16=fp16)
    return info


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--edit-gain", default=1.0, show_default=True,
              type=click.FloatRange(0.0, MAX_EDIT_GAIN, min_open=True),
              help="Scale on the generator's change at inference, as calibrated with evaluate --edit-gain.")
@click.option("--expression-gain", "expression_gains", multiple=True, metavar="EXPRESSION=G",
              help="Gain G instead of --edit-gain for edits towards EXPRESSION (repeatable), as calibrated with "
                   "evaluate --expression-gain.")
@click.option("--dataset", default="tfeid", show_default=True, help="Training data set, for the header.")
@click.option("--recipe", default="", help="How the weights were trained (configs, stages), for the header.")
@click.option("--validation", default="", metavar="ID,ID,...", help="Held-out identities, for the header.")
@click.option("--trained-on", default="", help="Hardware, for the header (e.g. '2-core CPU').")
@click.option("--geometry", default="", metavar="NAME",
              help="The geometry file (beside OUT) the generator was trained to take warped input from.")
@click.option("--texture", default="", metavar="NAME",
              help="The texture file (beside OUT) applied after the warp; with --geometry it makes the chain "
                   "warp + texture + this generator the default of process and convert.")
@click.option("--refine-gain", "refine_gains", multiple=True, metavar="EXPRESSION=G",
              help="The generator's gain towards EXPRESSION on warped and textured input (repeatable; 0: none), as "
                   "calibrated with evaluate --refine-gain.")
@click.option("--fp32", is_flag=True, help="Keep float32 weights (default: fp16, half the size).")
def main(checkpoints: tuple[Path, ...], out: Path, edit_gain: float, expression_gains: tuple[str, ...], dataset: str,
         recipe: str, validation: str, trained_on: str, geometry: str, texture: str, refine_gains: tuple[str, ...],
         fp32: bool) -> None:
    """Write CHECKPOINTS' generator to OUT with a user-facing header (fp16, licence, recipe notes, edit gain).

    Several checkpoints of one run (same architecture) are averaged into one generator; the header records them.

    \b
    Examples:
      python scripts/ship_weights.py RUN/checkpoints/step_00003000.safetensors weights/usgan_tfeid.safetensors \\
          --edit-gain 1.5 --validation 16,17,30 --recipe "configs/train/tfeid_64.yaml" --trained-on "2-core CPU"
      python scripts/ship_weights.py RUN/checkpoints/step_00004400.safetensors weights/usgan_tfeid.safetensors \\
          --edit-gain 1.1 --expression-gain happy=1.5 --validation 16,17,30
      python scripts/ship_weights.py RUN/checkpoints/step_0000{2800,2900,3000}.safetensors /tmp/avg.safetensors --fp32
    """
    try:
        info = ship(list(checkpoints), out, edit_gain, dataset, recipe, parse_identities(validation), trained_on,
                    fp16=not fp32, expression_gains=parse_expression_gains(expression_gains), geometry=geometry,
                    texture=texture, refine_gains=parse_expression_gains(refine_gains))
    except UserError as error:
        raise click.ClickException(str(error)) from error
    averaged = f", mean of {len(checkpoints)} checkpoints" if len(checkpoints) > 1 else ""
    click.echo(f"wrote {out} (step {info.step}{averaged}, {info.image_size} px, "
               f"edit gain {gain_text(info.edit_gain, info.expression_gains)}, "
               f"{'fp32' if fp32 else 'fp16'})")


if __name__ == "__main__":
    main()
