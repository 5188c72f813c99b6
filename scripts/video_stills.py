"""Evenly spaced still frames from videos, as an image folder that `cli.py prepare-data` can align.

Used for the model card's "unseen faces" evaluation: people who are not in the training set, filmed in their own
light. Talking-head frames are mostly neutral, so they all go under one expression folder (default neutral);
`evaluate` reports the judge's rate on these unchanged inputs next to the edited ones, so a wrong guess shows.

Example:
    python scripts/video_stills.py ../shared/media/video/*.mp4 --out ~/.cache/usgan/stills --per-video 4
    python cli.py prepare-data ~/.cache/usgan/stills ~/.cache/usgan/data/unseen --size 256
    python cli.py evaluate --weights weights/usgan_tfeid.safetensors --data ~/.cache/usgan/data/unseen/256 \\
        --out reports/unseen
"""

from __future__ import annotations

from pathlib import Path

import click
import cv2

from pipeline.video.decode import decode_video
from pipeline.video.probe import probe_video
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.files import atomic_write


def still_indices(frame_count: int, per_video: int) -> list[int]:
    """per_video frame indices spread evenly over the video, avoiding the first and last frame."""
    step = frame_count / (per_video + 1)
    return sorted({min(frame_count - 1, round(step * (k + 1))) for k in range(per_video)})


def write_stills(video: Path, out_dir: Path, per_video: int) -> int:
    """Write video's stills as out_dir/<stem>_f<index>.png; returns how many were written."""
    info = probe_video(video)
    count = info.frames or sum(1 for _ in decode_video(video))
    wanted = set(still_indices(count, per_video))
    written = 0
    for frame in decode_video(video):
        if frame.index in wanted:
            ok, encoded = cv2.imencode(".png", frame.image)
            if not ok:
                raise UserError(f"{video}: could not encode frame {frame.index} as PNG")
            still = out_dir / f"{video.stem}_f{frame.index:05d}.png"
            atomic_write(still, lambda tmp: tmp.write_bytes(encoded.tobytes()))
            written += 1
    return written


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Image folder to write: OUT/<expression>/<video>_f<frame>.png.")
@click.option("--per-video", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option("--expression", default="neutral", show_default=True, type=click.Choice(EXPRESSIONS),
              help="The folder the stills go in (prepare-data labels them with it).")
def main(videos: tuple[Path, ...], out: Path, per_video: int, expression: str) -> None:
    """Evenly spaced stills from VIDEOS into an image folder for prepare-data (see the module docstring)."""
    target = out / expression
    try:
        total = sum(write_stills(video, target, per_video) for video in videos)
    except UserError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {total} stills from {len(videos)} videos to {target}")


if __name__ == "__main__":
    main()
