#!/usr/bin/env python
"""US-GAN expression editing: process videos and photos, convert folders, train, import, export.

Every command turns its options (cli_options.py) into a typed config and calls one function; the logic lives in
usgan/ and pipeline/. One error boundary (Cli.invoke) wraps every command: a bad option, a user error or an OSError is
one line on stderr; Ctrl-C exits 130 and SIGTERM 143 after a clean stop. Heavy modules are imported inside the
commands, so the boundary is up at once.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn


def exit_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C before any command has begun (Python still importing): nothing was done, so stop at once."""
    os.write(2, b"interrupted: nothing was done\n")
    os._exit(130)


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, exit_while_starting)  # until Cli.invoke takes Ctrl-C over

# numpy's BLAS only does small per-face maths here (the expression geometry's fit and warp field); more threads of it
# spin against the generator's (geometry's busy time on a 2-core CPU: 30 s -> 11 s for a 216-frame clip). Set before
# numpy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# torch's OpenMP threads (the generator) spin after each parallel region by default, on the cores the other stage
# threads need. libgomp throttles that spin only while it manages more threads than there are cores: the CLI gets it
# by chance (model loading leaves an idle pool in the main thread), a studio render (a fresh thread, models loaded
# before) does not and its generator took 2x the CPU on a 2-core machine. Waiting OpenMP threads sleep instead, in
# every command. Set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402 - after the Ctrl-C handler

from cli_build import build_geometry_command, build_texture_command  # noqa: E402
from cli_options import (  # noqa: E402
    convert_options, evaluate_options, given_values, import_options, prepare_defaults, prepare_options, process_config,
    processing_options, train_options,
)
from pipeline.errors import describe_os_error  # noqa: E402
from pipeline.files import check_output_path  # noqa: E402
from usgan.config import with_values  # noqa: E402
from cli_studio import studio_command  # noqa: E402
from usgan.errors import UserError  # noqa: E402

NOTHING_WRITTEN = "no output was written"
KEPT_ON_INTERRUPT = {  # what Ctrl-C leaves behind, for the commands that keep finished work
    "convert": "finished files are kept in OUT_DIR and listed in its manifest.json; the same command skips them",
    "prepare-data": "crops already written are kept; the same command skips them",
    "build-geometry": "landmarks already found are kept in FOLDER/landmarks.npz; the same command reuses them",
    "train": "checkpoints already saved are kept; --resume continues from the newest",
}


STOP_SIGNALS: list[int] = []  # the Ctrl-C or SIGTERM that stopped the command, once one has


class Cli(click.Group):
    """The one error boundary: a user error or an OSError is one line on stderr and exit 1; Ctrl-C exits 130 and
    SIGTERM 143, after a clean stop."""

    def invoke(self, ctx: click.Context):
        take_over_interrupts()
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a bad option: one line too, as every other error (exit 2, as click's)
            where = error.ctx.command_path if error.ctx else "cli.py"
            fail(f"error: {error.format_message().rstrip('.')} (see {where} -h)", 2)
        except UserError as error:
            fail(f"error: {error}", 1)
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise  # stdout closed early (e.g. `| head`): click ends quietly
            fail(f"error: {describe_os_error(error)}", 1)
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", None) or (STOP_SIGNALS[0] if STOP_SIGNALS else signal.SIGINT)
            word = "terminated" if signum == signal.SIGTERM else "interrupted"
            fail(f"{word}: {KEPT_ON_INTERRUPT.get(ctx.invoked_subcommand or '', NOTHING_WRITTEN)}", 128 + signum)


def take_over_interrupts() -> None:
    """From here on the first Ctrl-C or SIGTERM raises KeyboardInterrupt, which every cleanup unwinds and the
    boundary turns into exit 130 or 143."""
    if signal.getsignal(signal.SIGINT) is exit_while_starting:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop_cleanly)


def stop_cleanly(signum: int, frame: object) -> None:
    """The first stop signal stops the command; later ones are ignored (also while Python shuts down, when its own
    handlers are gone), so that the cleanup runs to the end."""
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    raise_stop(signum)


def raise_stop(signum: int) -> NoReturn:
    STOP_SIGNALS.append(signum)
    raise KeyboardInterrupt


def fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Change the facial expression of people in videos and photos with US-GAN.

    \b
    Examples:
      python cli.py process video.mp4 --expression sad
      python cli.py convert photos/ out/ --expression happy --recursive
      python cli.py train --config configs/train/tfeid_128.yaml --data data/tfeid/128 --out runs/tfeid
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# --- prepare-data (face stage) ---


@cli.command("prepare-data")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@prepare_options
def prepare_data_command(sources: tuple[Path, ...], out: Path, **options: Any) -> None:
    """Detect, align and index a training set: OUT/<size>/<expression>/<stem>.png plus index.csv.

    Each SOURCE holds TFEID photos (PPTVxNN.jpg) and/or one folder per expression (e.g. the London set's neutral/
    and smiling/), where a file named PERSON_REST.jpg names its person. Re-running skips existing crops.

    \b
    Examples:
      python cli.py prepare-data tfeid/faces_256x256 ~/.cache/usgan/data/tfeid --size 128 --size 256
      python cli.py prepare-data tfeid/faces_256x256 london/ ~/.cache/usgan/data/faces
      python cli.py prepare-data my_faces/ data/mine --jobs 2 --det-pack buffalo_l
    """
    from pipeline.evaluation.prepare import prepare_data, prepare_summary_text

    config = with_values(prepare_defaults(), given_values(options))
    click.echo(prepare_summary_text(prepare_data(sources, out, config), out))


# --- build-geometry, build-texture (cli_build.py) ---

cli.add_command(build_geometry_command)
cli.add_command(build_texture_command)


# --- import-official / export (usgan/checkpoint.py, usgan/export.py) ---


@cli.command("import-official")
@click.argument("official", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@import_options
def import_official_command(official: Path, out: Path, image_size: int, label_order: str) -> None:
    """Convert the official US-GAN generator checkpoint (a torch state_dict) into our safetensors format.

    The file is read with torch.load(weights_only=True): no pickled code is ever run. The expression input
    channels are reordered to our canonical order (see --label-order).

    \b
    Examples:
      python cli.py import-official usgan_87_G.ckpt weights/usgan_official.safetensors
      python cli.py import-official usgan_87_G.ckpt weights/usgan_official.safetensors --image-size 128
    """
    from usgan.official import import_official
    from usgan.expressions import EXPRESSIONS, OFFICIAL_LABEL_ORDER

    order = OFFICIAL_LABEL_ORDER if label_order == "official" else EXPRESSIONS
    info = import_official(official, out, image_size=image_size, label_order=order)
    config = info.generator
    click.echo(f"wrote {out} (width {config.conv_dim}, {config.residual_blocks} residual block(s), {image_size}px)")


@cli.command("export")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--fp16", is_flag=True, help="fp16 weights and compute; inputs and output stay float32.")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,  # usgan.export.MIN/MAX_OPSET
              help="ONNX opset version.")
def export_command(weights: Path, out: Path, fp16: bool, opset: int) -> None:
    """Export generator weights to ONNX (inputs image, expression; output output) and check parity with torch.

    \b
    Examples:
      python cli.py export weights/usgan_official.safetensors weights/usgan.onnx
      python cli.py export weights/usgan_official.safetensors weights/usgan_fp16.onnx --fp16
    """
    from usgan.export import export_onnx

    check_output_path(out, weights)  # an unwritable OUT fails now, not after the trace and the parity check
    result = export_onnx(weights, out, fp16=fp16, opset=opset)
    click.echo(f"wrote {result.path} ({result.precision}, opset {result.opset}; "
               f"max |onnx - torch| = {result.max_abs_diff:.2e})")


# --- train (US-GAN training stack) ---


@cli.command("train")
@train_options
def train_command(config_path: Path | None, data_dir: Path, run_dir: Path, resume: bool, max_steps: int | None,
                  batch_size: int | None, settings: tuple[str, ...], init_generator: Path | None,
                  init_critic: Path | None, cpu: bool, dry_run: bool) -> None:
    """Train US-GAN (WGAN-GP + expression classification + cycle L1) on aligned face crops.

    One code path for the CPU, one GPU and many GPUs (launch with torchrun, see scripts/launch_torchrun.sh).
    Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits; --resume continues exactly.
    A resumed run must keep its config (only logging.*, data.workers, amp, optim.total_steps and
    optim.decay_start may change).

    \b
    Examples:
      python cli.py train --config configs/train/smoke.yaml --data data/tfeid/128 --out runs/smoke
      python cli.py train --config configs/train/tfeid_128.yaml --data data/tfeid/128 --out runs/x --dry-run
      python cli.py train --config configs/train/tfeid_128.yaml --data data/tfeid/128 --out runs/ft \\
          --init-generator weights/usgan_tfeid.safetensors --resume
      torchrun --nproc_per_node 4 cli.py train --config configs/train/default.yaml --data D --out R --resume
    """
    from usgan.training.config import RunOptions, config_yaml, load_train_config, parse_set_options
    from usgan.training.data import describe_data
    from usgan.training.loop import train

    config = load_train_config(config_path, parse_set_options(settings), {"optim.batch_size": batch_size})
    if dry_run:
        click.echo(config_yaml(config) + "\n" + describe_data(config, data_dir))
        return
    options = RunOptions(data_dir=data_dir, run_dir=run_dir, resume=resume, max_steps=max_steps, use_cuda=not cpu,
                         init_generator=init_generator, init_critic=init_critic)
    result = train(config, options)
    if result.is_main:
        click.echo(f"stopped at step {result.step}; latest generator weights: {result.weights}")
    if result.stopped_by:
        raise_stop(result.stopped_by)  # the checkpoint is saved: exit as a stopped command does


# --- evaluate (pipeline/evaluation/) ---


@cli.command("evaluate")
@evaluate_options
def evaluate_command(weights: Path | None, data_dir: Path | None, out_dir: Path, identities: str, limit: int | None,
                     video_pair: tuple[Path, Path] | None, expression_gains: tuple[str, ...],
                     refine_gains: tuple[str, ...], geometry: str | None, **options: Any) -> None:
    """Judge a generator: ArcFace identity cosine and fer expression accuracy per target class, plus a grid.

    \b
    Examples:
      python cli.py evaluate --weights weights/usgan.safetensors --data ~/.cache/usgan/data/tfeid/256 --out reports/v1
      python cli.py evaluate --weights W.safetensors --data D --out R --identities 05,21 --limit 40
      python cli.py evaluate --weights W.safetensors --data D --out R --edit-gain 1.5
      python cli.py evaluate --weights W.safetensors --data D --out R --edit-gain 1.1 --expression-gain happy=1.5
      python cli.py evaluate --weights W.safetensors --data D --out R --geometry weights/geometry.safetensors
      python cli.py evaluate --video-pair in.mp4 out.mp4 --out reports/flicker
    """
    from pipeline.evaluation.evaluate import EvaluateConfig, run_evaluation
    from pipeline.evaluation.report import evaluation_summary_lines
    from usgan.checkpoint import parse_expression_gains
    from usgan.dataset import parse_identities

    if (weights is None) != (data_dir is None):
        raise click.UsageError("--weights and --data go together")
    if weights is None and not video_pair:
        raise click.UsageError("give --weights and --data, or --video-pair, or both")
    if weights is None and geometry is not None:
        raise click.UsageError("--geometry goes with --weights and --data")
    config = EvaluateConfig(out=out_dir, weights=weights, data=data_dir, limit=limit,
                            identities=parse_identities(identities), video_pair=tuple(video_pair) if video_pair else None,
                            expression_gains=tuple(parse_expression_gains(expression_gains).items()),
                            refine_gains=tuple(parse_expression_gains(refine_gains).items()),
                            geometry="auto" if geometry is None else "off" if geometry == "off" else Path(geometry))
    metrics = run_evaluation(with_values(config, given_values(options)))
    for line in evaluation_summary_lines(metrics):
        click.echo(line)
    grids = (", grid.png" if weights else "") + (", grid_warp.png" if "conditions" in metrics else "")
    grids += ", grid_texture.png, grid_texture_generator.png" if "texture" in metrics.get("geometry", {}) else ""
    click.echo(f"wrote {out_dir}/metrics.json, report.md{grids}")


@cli.command("evaluate-video")
@click.argument("clips", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder: metrics.json, report.md and the processed clips in clips/.")
@processing_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate_video_command(clips: tuple[Path, ...], out_dir: Path, config_path: Path | None, fast: bool,
                           no_progress: bool, **options: Any) -> None:
    """Process video CLIPS as `process` does and measure each output against its input: flicker inside the face
    crops (and its ratio to the input's), and the correlation of the mouth's opening (speech kept).

    \b
    Examples:
      python cli.py evaluate-video clips/talk*.mp4 -e happy --out reports/video
      python cli.py evaluate-video clip.mp4 -e sad --weights my.safetensors --out reports/video_sad
    """
    from pipeline.evaluation.report import evaluation_summary_lines
    from pipeline.evaluation.video_clips import evaluate_clips

    config = process_config(config_path, fast, options, progress=False if no_progress else None)
    for line in evaluation_summary_lines(evaluate_clips(clips, out_dir, config)):
        click.echo(line)
    click.echo(f"wrote {out_dir}/metrics.json, report.md and the processed clips in {out_dir}/clips")


# --- process / convert (pipeline/process.py, pipeline/batch.py) ---


@cli.command("process")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))  # checked by process_file: one line
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file; default: INPUT's folder, <stem>_<expression>.<ext>.")
@processing_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def process_command(input_path: Path, output: Path | None, config_path: Path | None, fast: bool, no_progress: bool,
                    **options: Any) -> None:
    """Change the facial expression in a video or a photo (INPUT), keeping timing, rotation and audio.

    Prints one summary line: frames, faces, fps and each stage's busy seconds.

    \b
    Examples:
      python cli.py process clip.mp4 --expression sad
      python cli.py process clip.mp4 -e happy@0-3,sad@3-6 --fade 0.5 -o out.mp4
      python cli.py process photo.jpg -e surprised --weights my.safetensors --blend feather
      python cli.py process clip.mp4 -e joy --backend onnx --batch-size 16 --detect-every 1
      python cli.py process clip.mp4 -e sad --fast
    """
    from pipeline.process import process_file
    from pipeline.results import process_result_line

    config = process_config(config_path, fast, options, progress=False if no_progress else None)
    click.echo(process_result_line(process_file(input_path, output, config)))


@cli.command("convert")
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@processing_options
@convert_options
def convert_command(in_dir: Path, out_dir: Path, config_path: Path | None, fast: bool, recursive: bool, jobs: int,
                    engine: str, ray_address: str | None, no_progress: bool, **options: Any) -> None:
    """Convert every photo and video of IN_DIR into OUT_DIR (same relative paths and names).

    OUT_DIR/manifest.json lists every file of IN_DIR as done, skipped (complete from an earlier run, or of an
    unsupported type) or failed with its reason, each file as soon as it is written. Resumable: a re-run, also
    after Ctrl-C, skips the complete files. The exit status is 1 when any file failed.

    \b
    Examples:
      python cli.py convert photos/ out/ --expression happy
      python cli.py convert shoot/ shoot_sad/ -e sad --recursive --jobs 2 --backend onnx
      python cli.py convert photos/ out/ -e happy --fast
      python cli.py convert /shared/photos/ /shared/out/ -e happy --engine ray --ray-address auto
    """
    from pipeline.batch import convert_dir, summary_lines
    from pipeline.engines import engine_for

    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    config = process_config(config_path, fast, options, progress=False if no_progress else None)
    summary = convert_dir(in_dir, out_dir, config, recursive=recursive, jobs=jobs,
                          engine=engine_for(engine, ray_address))
    for line in summary_lines(summary):
        click.echo(line)
    if summary.failed:
        sys.exit(1)


cli.add_command(studio_command)  # the studio's page: pipeline/studio

if __name__ == "__main__":
    cli()
