#!/usr/bin/env python
"""US-GAN expression editing: process videos and photos, convert folders, train, import, export.

Every command turns its options into a typed config and calls one function; the logic lives in usgan/ and pipeline/.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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


# --- prepare-data (face stage) ---


@cli.command("prepare-data")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", "sizes", type=click.IntRange(32, 1024), multiple=True, default=(128,), show_default=True,
              help="Crop size in pixels; repeat for several sizes (one OUT/<size>/ each).")
@click.option("--pad", type=click.FloatRange(0.0, 2.0), default=0.5, show_default=True,
              help="Pad each side by this fraction before detection (finds faces in tight crops).")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option("--det-pack", default=None, metavar="NAME",
              help="Use the detector of an InsightFace model pack already on disk (e.g. buffalo_l); never downloaded.")
@click.option("--det-root", default="~/.insightface", show_default=True, help="Root holding models/<NAME>/.")
@click.option("--det-threshold", type=click.FloatRange(0.05, 0.99), default=0.5, show_default=True,
              help="Minimum detection score.")
def prepare_data_command(src: Path, out: Path, sizes: tuple[int, ...], pad: float, jobs: int,
                         det_pack: str | None, det_root: str, det_threshold: float) -> None:
    """Detect, align and index a training set: OUT/<size>/<expression>/<stem>.png plus index.csv.

    SRC holds TFEID photos (PPTVxNN.jpg) or one folder per expression. Re-running skips existing crops.

    \b
    Examples:
      python cli.py prepare-data ../shared/data/tfeid/faces_256x256 ~/.cache/usgan/data/tfeid --size 128 --size 256
      python cli.py prepare-data my_faces/ data/mine --jobs 2 --det-pack buffalo_l
    """
    from pipeline.evaluation.prepare import PrepareConfig, prepare_data, prepare_summary_text
    from pipeline.faces.detector import DetectorConfig

    detector = DetectorConfig(model_pack=det_pack, model_root=det_root, threshold=det_threshold, pad=pad)
    config = PrepareConfig(sizes=tuple(sorted(set(sizes))), jobs=jobs, detector=detector)
    click.echo(prepare_summary_text(prepare_data(src, out, config), out))


# --- import-official / export (usgan/checkpoint.py, usgan/export.py) ---


@cli.command("import-official")
@click.argument("official", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--image-size", type=click.IntRange(16, 1024), default=128, show_default=True,
              help="Face crop size the weights were trained at (stored in the header; multiple of 4).")
@click.option("--label-order", type=click.Choice(["official", "canonical"]), default="official", show_default=True,
              help="Expression order of the checkpoint's one-hot inputs: 'official' = the official code's "
                   "ImageFolder order of sorted folder codes (AFS, ANS, DIS, HAS, NES, SAS, SUS); "
                   "'canonical' = already angry, disgusted, fearful, happy, neutral, sad, surprised.")
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

    result = export_onnx(weights, out, fp16=fp16, opset=opset)
    click.echo(f"wrote {result.path} ({result.precision}, opset {result.opset}; "
               f"max |onnx - torch| = {result.max_abs_diff:.2e})")


# --- train (US-GAN training stack) ---


@cli.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Training config YAML (configs/train/*.yaml); default: the paper's settings.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Aligned crops: DIR/<expression>/*.png|jpg (+ optional index.csv), e.g. prepare-data's OUT/128.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: checkpoints/, samples/, tb/, config.yaml, generator.safetensors.")
@click.option("--resume", is_flag=True,
              help="Continue from the newest checkpoint in --out (starts fresh when there is none).")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Stop at this global step (the LR schedule still follows optim.total_steps).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Per-process batch size (optim.batch_size).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set optim.g_lr=2e-4 --set amp=fp16.")
@click.option("--init-generator", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Fine-tune: a fresh run starts its generator from these weights (.safetensors); "
                   "ignored when --resume finds a checkpoint.")
@click.option("--init-critic", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Fine-tune: a fresh run starts its critic from this training checkpoint's D "
                   "(RUN_DIR/checkpoints/step_N.safetensors); ignored when --resume finds a checkpoint.")
@click.option("--cpu", is_flag=True, help="Train on the CPU even when CUDA is available.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the data summary, then exit.")
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

    overrides = {**parse_set_options(settings), "optim.batch_size": batch_size}
    config = load_train_config(config_path, overrides)
    if dry_run:
        click.echo(config_yaml(config) + "\n" + describe_data(config, data_dir))
        return
    options = RunOptions(data_dir=data_dir, run_dir=run_dir, resume=resume, max_steps=max_steps, use_cuda=not cpu,
                         init_generator=init_generator, init_critic=init_critic)
    result = train(config, options)
    if result.is_main:
        click.echo(f"stopped at step {result.step}; latest generator weights: {result.weights}")


# --- evaluate (pipeline/evaluation/) ---


@cli.command("evaluate")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Generator weights to evaluate: a generator .safetensors or a training checkpoint "
                   "(RUN_DIR/checkpoints/step_N.safetensors).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Aligned crops: DIR/<expression>/*.png (+ index.csv), e.g. prepare-data's OUT/256.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder: metrics.json, report.md, grid.png.")
@click.option("--identities", default="", metavar="ID,ID,...",
              help="Only these identities (e.g. the validation performers); default: all.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many source crops.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--grid-rows", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--video-pair", type=click.Path(exists=True, dir_okay=False, path_type=Path), nargs=2, default=None,
              metavar="IN OUT", help="Also measure the flicker of a processed video OUT against its input IN.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the generator runs (the judges run on the CPU).")
@click.option("--edit-gain", type=click.FloatRange(0.0, 4.0, min_open=True), default=None,  # MAX_EDIT_GAIN
              help="Scale the generator's change by this instead of the weights' own gains (to calibrate it).")
@click.option("--expression-gain", "expression_gains", multiple=True, metavar="EXPRESSION=G",
              help="Use gain G for edits towards EXPRESSION (repeatable), e.g. --expression-gain happy=1.5.")
def evaluate_command(weights: Path | None, data_dir: Path | None, out_dir: Path, identities: str, limit: int | None,
                     batch_size: int, grid_rows: int, video_pair: tuple[Path, Path] | None, device: str,
                     edit_gain: float | None, expression_gains: tuple[str, ...]) -> None:
    """Judge a generator: ArcFace identity cosine and fer expression accuracy per target class, plus a grid.

    \b
    Examples:
      python cli.py evaluate --weights weights/usgan.safetensors --data ~/.cache/usgan/data/tfeid/256 --out reports/v1
      python cli.py evaluate --weights W.safetensors --data D --out R --identities 05,21 --limit 40
      python cli.py evaluate --weights W.safetensors --data D --out R --edit-gain 1.5
      python cli.py evaluate --weights W.safetensors --data D --out R --edit-gain 1.1 --expression-gain happy=1.5
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
    config = EvaluateConfig(out=out_dir, weights=weights, data=data_dir, limit=limit, batch_size=batch_size,
                            identities=parse_identities(identities),
                            grid_rows=grid_rows, video_pair=tuple(video_pair) if video_pair else None, device=device,
                            edit_gain=edit_gain,
                            expression_gains=tuple(parse_expression_gains(expression_gains).items()))
    for line in evaluation_summary_lines(run_evaluation(config)):
        click.echo(line)
    click.echo(f"wrote {out_dir}/metrics.json, report.md" + (", grid.png" if weights else ""))


# --- process / convert (pipeline/process.py, pipeline/batch.py) ---


def processing_options(command):
    """The options process and convert share; unset ones keep configs/pipeline/default.yaml's values."""
    from typing import get_args

    from pipeline.synthesize import TorchPrecision
    from pipeline.types import Backend, BlendMode, FaceSelection
    from pipeline.video.codecs import VIDEO_CODECS, X264_PRESETS

    options = [
        click.option("-e", "--expression", required=True, metavar="NAME|SCHEDULE|FILE.json",
                     help="Target expression (angry, disgusted, fearful, happy, neutral, sad, surprised, aliases "
                          "such as smile, or paper codes such as HAS), 'happy:0.5', a schedule in seconds "
                          "'happy@0-3,sad@3-6' (uncovered times stay unchanged) or a JSON schedule file."),
        click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Generator weights (.safetensors, or a training checkpoint); "
                          "default: weights/usgan_tfeid.safetensors."),
        click.option("--backend", type=click.Choice(list(get_args(Backend))), default=None,
                     help="Generator back-end (onnx: ONNX Runtime, TensorRT -> CUDA -> CPU).  [default: torch]"),
        click.option("--blend", type=click.Choice(list(get_args(BlendMode))), default=None,
                     help="Paste-back: Poisson (seamless) or feathered alpha.  [default: seamless]"),
        click.option("--intensity", type=click.FloatRange(0.0, 1.0), default=None,
                     help="Scales the generator's change: 0 = unchanged, 1 = full edit.  [default: 1]"),
        click.option("--fade", type=click.FloatRange(0.0, 60.0), default=None,
                     help="Seconds of cross-fade between scheduled expressions.  [default: 0]"),
        click.option("--batch-size", type=click.IntRange(1, 512), default=None,
                     help="Face crops per generator call, across frames and faces.  [default: 8]"),
        click.option("--faces", type=click.Choice(list(get_args(FaceSelection))), default=None,
                     help="Edit every face or only the largest one.  [default: all]"),
        click.option("--crop-size", type=click.IntRange(32, 1024), default=None,
                     help="Aligned face crop in pixels (the generator runs at its own size).  [default: 256]"),
        click.option("--detect-every", type=click.IntRange(1, 100), default=None,
                     help="Run the face detector on every N-th frame, interpolate the tracked faces in between.  "
                          "[default: 2]"),
        click.option("--precision", type=click.Choice(list(get_args(TorchPrecision))), default=None,
                     help="Torch generator precision; bf16 is ~2x faster on CPUs with AVX512-BF16/AMX and changes "
                          "pixels by at most a few levels; auto = bf16 where native.  [default: fp32]"),
        click.option("--fast", is_flag=True,
                     help="Speed preset (configs/pipeline/fast.yaml): detector at 320 px on every 3rd frame, "
                          "bf16 generator where native, Poisson blend at 1/4 scale. About 1.7x the default's fps on "
                          "a 2-core CPU; the output stays within 43 dB PSNR of the default's (what x264 at CRF 18 "
                          "itself changes); faces under ~1/20 of the frame's longer side may be missed. Explicit "
                          "options win. Measured in docs/BENCHMARKS.md."),
        click.option("--crf", type=click.IntRange(0, 51), default=None,
                     help="Video quality (x264 CRF; lower is better).  [default: 18]"),
        click.option("--preset", type=click.Choice(list(X264_PRESETS)), default=None,
                     help="Encoder speed preset.  [default: veryfast]"),
        click.option("--encoder", type=click.Choice(["auto", *VIDEO_CODECS]), default=None,
                     help="Video encoder (auto: h264_nvenc with CUDA, else libx264).  [default: auto]"),
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="Pipeline config YAML.  [default: configs/pipeline/default.yaml]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


PROCESS_OPTION_KEYS = {"expression": "expression", "weights": "synthesizer.weights", "backend": "synthesizer.backend",
                       "blend": "blend", "intensity": "intensity", "fade": "fade", "batch_size": "batch_size",
                       "faces": "faces", "crop_size": "crop_size", "detect_every": "tracker.detect_every",
                       "precision": "synthesizer.precision", "crf": "encoder.crf", "preset": "encoder.preset",
                       "encoder": "video_codec"}
"""The shared options' names -> the dotted ProcessConfig keys they set."""


def process_overrides(options: dict) -> dict:
    """Dotted ProcessConfig keys for the shared options (None values are left to the config file)."""
    return {key: options[name] for name, key in PROCESS_OPTION_KEYS.items()}


def option_names() -> dict:
    """Dotted ProcessConfig key -> the option that sets it ('--intensity'), so that a bad value's error names it."""
    return {key: "--" + name.replace("_", "-") for name, key in PROCESS_OPTION_KEYS.items()}


def preset_path(options: dict):
    """The preset file --fast names (None without it); its keys sit between the config file and explicit options."""
    from pipeline.config import FAST_PRESET

    return FAST_PRESET if options.get("fast") else None


@cli.command("process")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))  # checked by process_file: one line
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file; default: INPUT's folder, <stem>_<expression>.<ext>.")
@processing_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def process_command(input_path: Path, output: Path | None, config_path: Path | None, no_progress: bool,
                    **options) -> None:
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
    from pipeline.config import DEFAULT_CONFIG, load_process_config
    from pipeline.process import process_file, process_result_line

    overrides = {**process_overrides(options), "progress": False if no_progress else None}
    config = load_process_config(config_path or DEFAULT_CONFIG, overrides, preset_path(options), option_names())
    result = process_file(input_path, output, config)
    click.echo(process_result_line(result))


@cli.command("convert")
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@processing_options
@click.option("--recursive", is_flag=True, help="Also convert the files of IN_DIR's subfolders.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
def convert_command(in_dir: Path, out_dir: Path, config_path: Path | None, recursive: bool, jobs: int,
                    **options) -> None:
    """Convert every photo and video of IN_DIR into OUT_DIR (same relative paths and names).

    Resumable: files that OUT_DIR/manifest.json records as complete are skipped. A bad file is recorded as
    failed with its reason and the rest go on; the exit status is 1 when any file failed.

    \b
    Examples:
      python cli.py convert photos/ out/ --expression happy
      python cli.py convert shoot/ shoot_sad/ -e sad --recursive --jobs 2 --backend onnx
      python cli.py convert photos/ out/ -e happy --fast
    """
    from pipeline.batch import convert_dir, summary_lines
    from pipeline.config import DEFAULT_CONFIG, load_process_config

    config = load_process_config(config_path or DEFAULT_CONFIG, process_overrides(options), preset_path(options),
                                 option_names())
    summary = convert_dir(in_dir, out_dir, config, recursive=recursive, jobs=jobs)
    for line in summary_lines(summary):
        click.echo(line)
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    cli()
