"""The model-building commands of cli.py: build-geometry and build-texture, from prepare-data output (the logic is in
pipeline/evaluation/geometry_build.py and texture_build.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("build-geometry")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The geometry model file to write (e.g. weights/geometry.safetensors).")
@click.option("--hold-out", default="", metavar="IDS",
              help="People left out of the model, comma-separated (those you evaluate on); their expression "
                   "pairs then measure it.")
def build_geometry_command(folders: tuple[Path, ...], out: Path, hold_out: str) -> None:
    """Build the expression geometry model from prepare-data output FOLDERS (OUT/<size>).

    Finds the 106 landmarks of every crop (cached in FOLDER/landmarks.npz, which training on warped input reads)
    and fits a shape model: the mean face and how people's shapes differ, from neutral photos of known people, and
    each expression's mean displacement, from photos of one person with and without it.

    \b
    Examples:
      python cli.py build-geometry ~/.cache/usgan/data/faces/128 --out weights/geometry.safetensors \\
          --hold-out 16,17,30
    """
    from pipeline.evaluation.geometry_build import write_geometry
    from usgan.dataset import parse_identities

    model, check = write_geometry(folders, parse_identities(hold_out), out)
    click.echo(f"wrote {out}: {model.sources['photos']} photos of {model.sources['people']} people")
    if check.pairs:
        click.echo(f"held-out people, {check.pairs} expression pairs: the target shape is {check.predicted:.4f} eye "
                   f"distances from the real photo's (the source left unchanged: {check.unchanged:.4f})")


@click.command("build-texture")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The texture model file to write (e.g. weights/texture.safetensors).")
@click.option("--geometry", "geometry_path", default="weights/geometry.safetensors", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The shape model whose frame it lives in.")
@click.option("--hold-out", default=None, metavar="IDS",
              help="People left out, comma-separated [default: those the geometry file left out].")
def build_texture_command(folders: tuple[Path, ...], out: Path, geometry_path: Path, hold_out: str | None) -> None:
    """Build the expression texture model (ratio images and donor mouths) from prepare-data output FOLDERS.

    \b
    Examples:
      python cli.py build-texture ~/.cache/usgan/data/faces/256 --out weights/texture.safetensors
    """
    from pipeline.evaluation.texture_build import write_texture
    from usgan.dataset import parse_identities
    from usgan.geometry import load_model

    model = load_model(geometry_path)
    held = parse_identities(hold_out) if hold_out is not None else tuple(model.sources.get("held_out", ()))
    texture = write_texture(model, folders, held, out)
    pairs = ", ".join(f"{name} {count['pairs']}" for name, count in texture.sources["pairs"].items())
    click.echo(f"wrote {out}: {texture.sources['people']} people; pairs: {pairs}")
