"""The studio command of cli.py: its options; the page and its serving are in pipeline/studio."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from pipeline.studio.command import DEFAULT_HOST, DEFAULT_PORT, exposure_warning, serve


@click.command("studio")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to serve on; anything but loopback exposes the studio to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="Port.")
@click.option("--weights", "weights_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of generator weights to offer besides weights/ (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where renders are written (one folder per render); default: a new temporary folder.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pipeline config YAML (default: configs/pipeline/default.yaml).")
def studio_command(host: str, port: int, weights_dirs: tuple[Path, ...], out_dir: Path | None,
                   config_path: Path | None) -> None:
    """Serve the studio: a local page to preview and render expressions on photos and videos, and convert folders.

    \b
    Examples:
      python cli.py studio                       # then open http://127.0.0.1:7860
      python cli.py studio --port 8000 --weights runs/tfeid/
      usgan-studio studio --out ~/renders
    """
    warning = exposure_warning(host)
    if warning:
        click.echo(warning, err=True)
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="usgan-studio-"))
    serve(host, port, weights_dirs, out_dir, config_path, announce=lambda line: click.echo(line, err=True))
