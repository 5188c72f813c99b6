"""The settings of process and convert, read and checked once.

ProcessConfig mirrors configs/pipeline/default.yaml; a preset (fast.yaml) and explicit options override it, in that
order. load_process_config checks every value once and names where a bad one came from: the file, the preset, or
the option. parse_edit then turns the settings that need parsing into the typed Edit the stages receive: the
expression schedule, parsed once, the generator weights file, resolved once, and the expression geometry's shape
model, read once.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.choices import BOUNDS, CHOICES, Backend, BlendMode, FaceSelection, TorchDevice, TorchPrecision
from pipeline.faces.detector import DetectorConfig
from pipeline.faces.tracking import TrackerConfig
from pipeline.schedule import Schedule, parse_schedule
from pipeline.video.codecs import EncoderConfig
from usgan.config import ConfigError, flatten, from_mapping, load_config, read_yaml
from usgan.errors import UserError
from usgan.providers import ExecutionPreference

if TYPE_CHECKING:  # loading the config imports neither torch nor onnx
    from usgan.geometry import ShapeModel
    from usgan.texture import TextureModel

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "default.yaml"
FAST_PRESET = DEFAULT_CONFIG.with_name("fast.yaml")
"""The `--fast` preset: a partial config whose keys override the base config (explicit options override both)."""


DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "usgan_tfeid.safetensors"
"""The project's shipped generator; the one place its path is written."""
DEFAULT_ONNX_CACHE = "~/.cache/usgan/onnx"

class WeightsMissingError(UserError):
    """No weights given and none shipped."""


@dataclass(frozen=True)
class OnnxConfig:
    """ONNX Runtime settings. fp16 None: fp16 exactly when a GPU provider is usable (fp32 on the CPU)."""

    preference: ExecutionPreference = "auto"
    fp16: bool | None = None
    cache_dir: str = DEFAULT_ONNX_CACHE  # exported graphs (keyed by the weights' hash) and TensorRT engines
    threads: int = 0  # intra-op threads; 0 = automatic (the pipeline gives the generator all the cores)


@dataclass(frozen=True)
class SynthesizerConfig:
    """Which generator to run and on what. weights None: DEFAULT_WEIGHTS."""

    backend: Backend = "torch"
    weights: Path | None = None
    device: TorchDevice = "auto"  # torch back-end: cuda when available
    threads: int = 0  # torch intra-op threads; 0 = automatic (the pipeline gives the generator all the cores)
    precision: TorchPrecision = "fp32"  # torch back-end: bf16 runs the convolutions in bfloat16 (autocast)
    onnx: OnnxConfig = OnnxConfig()
    # Expression geometry (pipeline.geometry): "auto" = the shape model the weights' header names (none: no warp),
    # "off" = no warp, else a shape model file.
    geometry: str = "auto"
    # Expression texture after the warp (usgan.texture): "auto" = the texture file the weights' header names (none:
    # no texture), "off", else a texture file. Only with a warp.
    texture: str = "auto"


def resolve_weights(weights: Path | str | None) -> Path:
    """The weights file to load: the given one, or the shipped default when it exists."""
    if weights is not None:
        return Path(weights).expanduser()
    if not DEFAULT_WEIGHTS.is_file():
        raise WeightsMissingError(
            f"{DEFAULT_WEIGHTS}: default weights missing from this checkout: pass --weights W.safetensors")
    return DEFAULT_WEIGHTS


@dataclass(frozen=True)
class ProcessConfig:
    """Everything process/convert need; defaults in configs/pipeline/default.yaml, CLI options override.

    expression: a name or alias, "name:intensity", a schedule "happy@0-3,sad@3-6" (seconds) or a .json file.
    intensity scales the generator's change (0 = unchanged, 1 = its full edit), on top of the schedule's own.
    crop_size: aligned crop in pixels; the generator runs at its own size and only its change is upsampled.
    video_codec: "auto" (h264_nvenc with CUDA, else libx264) or one of pipeline.video.codecs.VIDEO_CODECS.
    image_pad: still images where no face is found are searched again padded by this fraction (tight face crops).
    """

    expression: str = "happy"
    intensity: float = 1.0
    fade: float = 0.0
    faces: FaceSelection = "all"
    crop_size: int = 256
    batch_size: int = 8
    blend: BlendMode = "seamless"
    clone_scale: float = 0.5
    image_pad: float = 0.5
    video_codec: str = "auto"
    queue_size: int = 8
    progress: bool = True
    synthesizer: SynthesizerConfig = SynthesizerConfig()
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    encoder: EncoderConfig = EncoderConfig()


@dataclass(frozen=True)
class Edit:
    """What a run changes, parsed from ProcessConfig once: the expression schedule, the generator weights file and
    the expression geometry's shape model (None: no warp)."""

    schedule: Schedule
    weights: Path
    geometry: ShapeModel | None = None
    texture: TextureModel | None = None  # only with a geometry


def parse_edit(config: ProcessConfig) -> Edit:
    """The schedule parsed, the weights file resolved (the shipped default when none is set) and the shape model
    read; errors name them."""
    schedule = parse_schedule(config.expression, config.fade)
    weights = resolve_weights(config.synthesizer.weights)
    geometry = read_geometry(config.synthesizer.geometry, weights)
    texture = read_texture(config.synthesizer.texture, weights) if geometry is not None else None
    return Edit(schedule, weights, geometry, texture)


def read_geometry(setting: str, weights: Path) -> ShapeModel | None:
    """The shape model synthesizer.geometry selects for these weights (pipeline.geometry), None for no warp."""
    if setting == "off":
        return None
    from pipeline.geometry import resolve_geometry
    from usgan.geometry import load_model

    path = resolve_geometry(setting, weights)
    return None if path is None else load_model(path)


def read_texture(setting: str, weights: Path) -> TextureModel | None:
    """The texture model synthesizer.texture selects for these weights, None for none."""
    if setting == "off":
        return None
    from pipeline.geometry import resolve_geometry
    from usgan.texture import load_texture

    path = resolve_geometry(setting, weights, key="texture")
    return None if path is None else load_texture(path)


# ---------------------------------------------------------------- loading


def load_process_config(path: Path | None = DEFAULT_CONFIG, overrides: Mapping[str, Any] | None = None,
                        preset: Path | None = None, option_names: Mapping[str, str] | None = None) -> ProcessConfig:
    """ProcessConfig from a YAML file (default: configs/pipeline/default.yaml), then a preset's keys (e.g.
    FAST_PRESET), then dotted-key overrides (None values leave the key to the file and preset).

    option_names: the option each override came from ({'intensity': '--intensity'}), so that an error names it.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    preset_keys = preset_overrides(preset) if preset else {}
    options = {key: (option_names or {}).get(key, f"override {key}") for key in given}
    sources = Sources(str(path) if path else "ProcessConfig", str(preset) if preset else None,
                      frozenset(preset_keys), options)
    config = load_config(ProcessConfig, path, {**preset_keys, **given}, blame=sources.blame)
    return check_config(config, sources=sources)


def preset_overrides(path: Path) -> dict[str, Any]:
    """A partial config YAML flattened to dotted keys ({'detector': {'input_size': 320}} -> 'detector.input_size');
    unknown keys are a ConfigError naming the preset."""
    mapping = read_yaml(path, "preset") or {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of config keys")
    from_mapping(ProcessConfig, mapping, str(path))
    return flatten(mapping)


def share_threads(config: ProcessConfig, cpus: int) -> ProcessConfig:
    """Fill automatic (0) thread counts: the generator gets all of `cpus`, the detector half of them.

    Both run at once in their own stage threads. The generator is the heavier stage, so it gets the cores the
    detector leaves idle; giving each library all the cores (their own default) oversubscribes them and is slower.
    """
    every, half = max(1, cpus), max(1, cpus // 2)
    synthesizer, onnx = config.synthesizer, config.synthesizer.onnx
    return replace(
        config, detector=replace(config.detector, threads=config.detector.threads or half),
        synthesizer=replace(synthesizer, threads=synthesizer.threads or every,
                            onnx=replace(onnx, threads=onnx.threads or every)))


# ---------------------------------------------------------------- checking


@dataclass(frozen=True)
class Sources:
    """Where the settings of a ProcessConfig came from, so that an error names the file, preset or option."""

    file: str = "config"
    preset: str | None = None
    preset_keys: frozenset[str] = frozenset()
    options: Mapping[str, str] = field(default_factory=dict)  # dotted key -> option, e.g. "--intensity"

    def blame(self, key: str) -> str:
        """'--intensity:' for a value an option set, else 'FILE: key' (the preset's file when the preset set it)."""
        if key in self.options:
            return f"{self.options[key]}:"
        return f"{self.preset if key in self.preset_keys else self.file}: {key}"


def check_config(config: ProcessConfig, where: str = "config", sources: Sources | None = None) -> ProcessConfig:
    """Raise ConfigError naming the first setting out of its range or closed set, and where it came from (sources,
    else `where`); returns config."""
    sources = sources or Sources(where)
    for key, allowed in CHOICES.items():
        value = operator.attrgetter(key)(config)
        if value not in allowed:
            raise ConfigError(f"{sources.blame(key)} must be one of {', '.join(allowed)}, got {value!r}")
    for key, bound in BOUNDS.items():
        value = operator.attrgetter(key)(config)
        if not bound.admits(value):
            raise ConfigError(f"{sources.blame(key)} must be {bound.describe()}, got {value!r}")
    if config.synthesizer.precision == "bf16" and config.synthesizer.backend != "torch":
        raise ConfigError(f"{sources.blame('synthesizer.precision')} must be fp32 or auto with the onnx back-end "
                          "(bf16 is torch-only; ONNX Runtime uses synthesizer.onnx.fp16 on GPUs)")
    return config
