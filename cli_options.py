"""The click options of the CLI's commands, and the plumbing for options that set typed-config keys.

Each processing option sets one ProcessConfig key over the config file, offers the closed set or the range that
pipeline.choices defines for that key, and shows the value configs/pipeline/default.yaml gives as its default.
Defaults are looked up when --help or parsing needs them, so the CLI starts without importing torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.choices import BOUNDS, CHOICES, ENGINES

ROOT = Path(__file__).resolve().parent


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan (which compares false against both bounds)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


class ShownDefault(click.Option):
    """An option that stays None unless given; --help shows shown(), the value that then applies."""

    def __init__(self, param_decls: Any, *, shown: Callable[[], Any], **kwargs: Any):
        super().__init__(param_decls, **kwargs)
        self.shown = shown

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        value = None if self.required else self.shown()
        if value is not None:
            extra["default"] = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return extra


class ConfigOption(ShownDefault):
    """An option that sets the dotted key config_key of a typed config; --help shows that key's value in
    defaults() (the config file's or the dataclass's), unless shown says what a None default means."""

    def __init__(self, param_decls: Any, *, config_key: str, defaults: Callable[[], Any],
                 shown: Callable[[], Any] | None = None, **kwargs: Any):
        super().__init__(param_decls, shown=shown or (lambda: config_value(defaults(), config_key)), **kwargs)
        self.config_key = config_key


def config_value(config: Any, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), config)


def given_values(options: dict[str, Any]) -> dict[str, Any]:
    """{dotted config key: value} of the current command's ConfigOptions (None where not given)."""
    params = click.get_current_context().command.params
    return {param.config_key: options[param.name] for param in params if isinstance(param, ConfigOption)}


def repo_path(path: Path) -> str:
    """path relative to the checkout when inside it (as --help shows it)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def process_defaults():
    """The ProcessConfig that configs/pipeline/default.yaml gives (what --help shows as defaults)."""
    from pipeline.config import DEFAULT_CONFIG, load_process_config

    return load_process_config(DEFAULT_CONFIG)


def bounded(key: str) -> click.ParamType:
    """The click type of a numeric setting: its kind and range from pipeline.choices.BOUNDS."""
    bound = BOUNDS[key]
    high = None if math.isinf(bound.high) else bound.high
    if bound.kind is int:
        return click.IntRange(int(bound.low), None if high is None else int(high))
    return FiniteRange(bound.low, high)


def shipped_weights() -> str:
    from pipeline.config import DEFAULT_WEIGHTS

    return repo_path(DEFAULT_WEIGHTS)


def default_config_file() -> str:
    from pipeline.config import DEFAULT_CONFIG

    return repo_path(DEFAULT_CONFIG)


def options_from(defaults: Callable[[], Any]) -> Callable[..., Any]:
    """click.option for ConfigOptions whose shown defaults are read from the config defaults() returns."""
    return functools.partial(click.option, cls=ConfigOption, defaults=defaults)


config_option = options_from(process_defaults)  # a processing option; --help shows default.yaml's value


def choice_option(name: str, config_key: str, help: str):
    return config_option(f"--{name}", config_key=config_key, type=click.Choice(CHOICES[config_key]), help=help)


def range_option(*names: str, config_key: str, help: str):
    return config_option(*names, config_key=config_key, type=bounded(config_key), help=help)


def stacked(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying options in the order --help lists them."""
    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


processing_options = stacked(
    config_option("-e", "--expression", config_key="expression", required=True, metavar="NAME|SCHEDULE|FILE.json",
                  help="Target expression (angry, disgusted, fearful, happy, neutral, sad, surprised, aliases "
                       "such as smile, or paper codes such as HAS), 'happy:0.5', a schedule in seconds "
                       "'happy@0-3,sad@3-6' (uncovered times stay unchanged) or a JSON schedule file."),
    config_option("--weights", config_key="synthesizer.weights", shown=shipped_weights,
                  type=click.Path(dir_okay=False, path_type=Path),
                  help="Generator weights (.safetensors, or a training checkpoint)."),
    config_option("--geometry", config_key="synthesizer.geometry", metavar="auto|off|FILE",
                  help="Expression geometry: warp each face's landmarks towards the target expression, then the "
                       "generator paints the texture. auto: the shape model the weights name (none: off); off; "
                       "or a shape model file (.safetensors)."),
    config_option("--texture", config_key="synthesizer.texture", metavar="auto|off|FILE", help="Expression texture "
                  "after the warp (folds, teeth, an opened mouth): auto (the file the weights name), off, or a file."),
    choice_option("backend", "synthesizer.backend", "Generator back-end (onnx: ONNX Runtime, TensorRT -> CUDA -> "
                                                     "CPU)."),
    choice_option("blend", "blend", "Paste-back: Poisson (seamless) or feathered alpha."),
    range_option("--intensity", config_key="intensity",
                 help="Scales the generator's change: 0 = unchanged, 1 = full edit."),
    range_option("--fade", config_key="fade", help="Seconds of cross-fade between scheduled expressions."),
    range_option("--batch-size", config_key="batch_size",
                 help="Face crops per generator call, across frames and faces."),
    choice_option("faces", "faces", "Edit every face or only the largest one."),
    range_option("--crop-size", config_key="crop_size",
                 help="Aligned face crop in pixels (the generator runs at its own size)."),
    range_option("--detect-every", config_key="tracker.detect_every",
                 help="Run the face detector on every N-th frame, interpolate the tracked faces in between."),
    choice_option("precision", "synthesizer.precision",
                  "Torch generator precision: bf16 is faster on CPUs that run it natively (AVX512-BF16, AMX) "
                  "and changes pixels slightly; auto = bf16 where native."),
    click.option("--fast", is_flag=True,
                 help="Speed preset (configs/pipeline/fast.yaml): a smaller detector input on fewer frames, bf16 "
                      "where native, a coarser Poisson blend; very small faces may be missed. Explicit options "
                      "win. See docs/BENCHMARKS.md."),
    range_option("--crf", config_key="encoder.crf", help="Video quality (x264 CRF; lower is better)."),
    choice_option("preset", "encoder.preset", "Encoder speed preset."),
    choice_option("encoder", "video_codec", "Video encoder (auto: h264_nvenc with CUDA, else libx264)."),
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 cls=ShownDefault, shown=default_config_file,
                 help="Pipeline config YAML."),
)


def prepare_defaults():
    from pipeline.evaluation.prepare import PrepareConfig

    return PrepareConfig()


prepare_option = options_from(prepare_defaults)


prepare_options = stacked(
    prepare_option("--size", "sizes", config_key="sizes", type=click.IntRange(32, 1024), multiple=True,
                   callback=lambda ctx, param, sizes: tuple(sorted(set(sizes))) or None,
                   help="Crop size in pixels; repeat for several sizes (one OUT/<size>/ each)."),
    prepare_option("--pad", config_key="detector.pad", type=click.FloatRange(0.0, 2.0),
                   help="Pad each side by this fraction before detection (finds faces in tight crops)."),
    prepare_option("--jobs", config_key="jobs", type=click.IntRange(1, 64), help="Worker processes."),
    prepare_option("--det-pack", config_key="detector.model_pack", metavar="NAME",
                   help="Use the detector of an InsightFace model pack already on disk (e.g. buffalo_l); never "
                        "downloaded."),
    prepare_option("--det-root", config_key="detector.model_root", help="Root holding models/<NAME>/."),
    prepare_option("--det-threshold", config_key="detector.threshold", type=click.FloatRange(0.05, 0.99),
                   help="Minimum detection score."),
)


import_options = stacked(
    click.option("--image-size", type=click.IntRange(16, 1024), default=128, show_default=True,
                 help="Face crop size the weights were trained at (stored in the header; multiple of 4)."),
    click.option("--label-order", type=click.Choice(["official", "canonical"]), default="official", show_default=True,
                 help="Expression order of the checkpoint's one-hot inputs: 'official' = the official code's "
                      "ImageFolder order of sorted folder codes (AFS, ANS, DIS, HAS, NES, SAS, SUS); "
                      "'canonical' = already angry, disgusted, fearful, happy, neutral, sad, surprised."),
)


train_options = stacked(
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="Training config YAML (configs/train/*.yaml); default: the paper's settings."),
    click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="Aligned crops: DIR/<expression>/*.png|jpg (+ optional index.csv), e.g. prepare-data's OUT/128."),
    click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="Run directory: checkpoints/, samples/, tb/, config.yaml, generator.safetensors."),
    click.option("--resume", is_flag=True,
                 help="Continue from the newest checkpoint in --out (starts fresh when there is none)."),
    click.option("--max-steps", type=click.IntRange(1), default=None,
                 help="Stop at this global step (the LR schedule still follows optim.total_steps)."),
    click.option("--batch-size", type=click.IntRange(1), default=None,
                 help="Per-process batch size (optim.batch_size)."),
    click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                 help="Override any config key, e.g. --set optim.g_lr=2e-4 --set amp=fp16."),
    click.option("--init-generator", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="Fine-tune: a fresh run starts its generator from these weights (.safetensors); "
                      "ignored when --resume finds a checkpoint."),
    click.option("--init-critic", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="Fine-tune: a fresh run starts its critic from this training checkpoint's D "
                      "(RUN_DIR/checkpoints/step_N.safetensors); ignored when --resume finds a checkpoint."),
    click.option("--cpu", is_flag=True, help="Train on the CPU even when CUDA is available."),
    click.option("--dry-run", is_flag=True, help="Print the resolved config and the data summary, then exit."),
)


def evaluate_defaults():
    from pipeline.evaluation.evaluate import EvaluateConfig

    return EvaluateConfig(out=Path("."))


evaluate_option = options_from(evaluate_defaults)


evaluate_options = stacked(
    click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="Generator weights to evaluate: a generator .safetensors or a training checkpoint "
                      "(RUN_DIR/checkpoints/step_N.safetensors)."),
    click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                 help="Aligned crops: DIR/<expression>/*.png (+ index.csv), e.g. prepare-data's OUT/256."),
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="Report folder: metrics.json, report.md, grid.png."),
    click.option("--identities", default="", metavar="ID,ID,...",
                 help="Only these identities (e.g. the validation performers); default: all."),
    click.option("--limit", type=click.IntRange(1), default=None, help="At most this many source crops."),
    evaluate_option("--batch-size", config_key="batch_size", type=click.IntRange(1, 256)),
    evaluate_option("--grid-rows", config_key="grid_rows", type=click.IntRange(1, 64)),
    click.option("--video-pair", type=click.Path(exists=True, dir_okay=False, path_type=Path), nargs=2, default=None,
                 metavar="IN OUT", help="Also measure the flicker of a processed video OUT against its input IN."),
    evaluate_option("--device", config_key="device", type=click.Choice(["cpu", "cuda"]),
                    help="Where the generator runs (the judges run on the CPU)."),
    evaluate_option("--edit-gain", config_key="edit_gain", type=FiniteRange(0.0, 4.0, min_open=True),  # MAX_EDIT_GAIN
                    help="Scale the generator's change by this instead of the weights' own gains (to calibrate it)."),
    click.option("--expression-gain", "expression_gains", multiple=True, metavar="EXPRESSION=G",
                 help="Use gain G for edits towards EXPRESSION (repeatable), e.g. --expression-gain happy=1.5."),
    click.option("--refine-gain", "refine_gains", multiple=True, metavar="EXPRESSION=G",
                 help="The generator's gain on warped and textured input towards EXPRESSION (repeatable; 0: none)."),
    click.option("--geometry", metavar="PATH|off", default=None,
                 help="Expression geometry model (.safetensors): also judge the landmark warp alone and the warp "
                      "followed by the generator, side by side with the generator alone. Default: the file the "
                      "weights' header names, if any; 'off': the generator alone."),
    evaluate_option("--warp-intensity", config_key="warp_intensity", type=FiniteRange(0.0, 2.0),
                    help="Scale the warp's landmark displacement (0: the warp changes nothing)."),
    evaluate_option("--texture", config_key="texture", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                    help="Expression texture model: also judge warp + texture, with and without the generator."),
)


convert_options = stacked(
    click.option("--recursive", is_flag=True, help="Also convert the files of IN_DIR's subfolders."),
    click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="Worker processes, each with its own models (ray: the CPUs of the local Ray it starts)."),
    click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                 help="local: this machine; ray: a Ray cluster (docs/RAY.md)."),
    click.option("--ray-address", metavar="ADDR", default=None,
                 help="With --engine ray: a running cluster to join ('auto': this machine's); default: a local Ray "
                      "for this run."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
)


def process_config(config_path: Path | None, fast: bool, options: dict[str, Any], **settings: Any):
    """The ProcessConfig: the config file, then --fast's preset, then the options given."""
    from pipeline.config import DEFAULT_CONFIG, FAST_PRESET, load_process_config

    overrides = {**given_values(options), **settings}
    return load_process_config(config_path or DEFAULT_CONFIG, overrides, FAST_PRESET if fast else None,
                               option_names())


def option_names() -> dict[str, str]:
    """{dotted config key: the option that sets it ('--intensity')}, so that a bad value's error names the option."""
    params = click.get_current_context().command.params
    return {param.config_key: max(param.opts, key=len) for param in params if isinstance(param, ConfigOption)}


