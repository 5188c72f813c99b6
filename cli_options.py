"""The click options of the CLI's commands, and the plumbing for options that set typed-config keys.

Each processing option sets one ProcessConfig key over the config file, offers the closed set or the range that
pipeline.choices defines for that key, and shows the value configs/pipeline/default.yaml gives as its default.
Defaults are looked up when --help or parsing needs them, so the CLI starts without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.choices import BOUNDS, CHOICES

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


def with_values(config: Any, values: dict[str, Any]) -> Any:
    """config (a frozen dataclass) with the given dotted keys replaced; None values keep config's own."""
    for key, value in values.items():
        if value is not None:
            config = replaced(config, key.split("."), value)
    return config


def replaced(config: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    return dataclasses.replace(config, **{head: replaced(getattr(config, head), rest, value) if rest else value})


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


def processing_options(command):
    """The options process and convert share; unset ones keep the config file's values."""
    options = [
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
    ]
    for option in reversed(options):
        command = option(command)
    return command


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


