#!/usr/bin/env python
"""US-GAN expression editing: process videos and photos, convert folders, train, import, export.

Every command turns its options into a typed config and calls one function; the logic lives in usgan/ and pipeline/.
"""

from __future__ import annotations

import logging
import sys

import click

from usgan.errors import UserError


class Cli(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was written", err=True)
            sys.exit(130)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Change the facial expression of people in videos and photos with US-GAN.

    \b
    Examples:
      python cli.py process video.mp4 --expression sad
      python cli.py convert photos/ out/ --expression happy --recursive
      python cli.py train --config configs/train/tfeid.yaml --data data/tfeid --out runs/tfeid
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# --- commands below: each one parses options into a typed config and calls one function ---


if __name__ == "__main__":
    cli()
