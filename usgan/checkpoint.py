"""Checkpoint I/O: safetensors files with a JSON metadata header. No pickle is ever executed."""

from __future__ import annotations

from usgan.errors import UserError

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from usgan.config import ConfigError, from_mapping
from usgan.expressions import EXPRESSIONS, check_expression_numbers, parse_expression
from usgan.files import atomic_write, safetensors_write
from usgan.model import Generator, GeneratorConfig

FORMAT_GENERATOR = "usgan-generator"
FORMAT_TRAIN_STATE = "usgan-train-state"  # usgan.training's checkpoints: G.*, D.*, optimisers, RNG, config
METADATA_KEY = "usgan"
NORMALIZATION = "RGB, float in [-1, 1] = pixel / 127.5 - 1"
DEFAULT_LICENSE = "research use only (trained on TFEID; see MODEL_CARD.md)"
# Containers that training scripts commonly wrap a generator state_dict in; the official one saves it bare.
MAX_EDIT_GAIN = 4.0


class CheckpointError(UserError):
    """A weights file that is missing, corrupt, truncated or not ours; the message names the file."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a generator file says about itself (its JSON header)."""

    generator: GeneratorConfig = GeneratorConfig()
    expressions: tuple[str, ...] = EXPRESSIONS
    image_size: int = 128
    normalization: str = NORMALIZATION
    step: int = 0
    dataset: str = "unknown"
    license: str = DEFAULT_LICENSE
    notes: dict[str, Any] = field(default_factory=dict)
    # Scale on the generator's change (output - input) at inference, calibrated after training on validation
    # faces (1 = as trained); a user's --intensity multiplies it.
    edit_gain: float = 1.0
    # Per-target overrides of edit_gain, e.g. {"happy": 1.5}: some expressions need a larger change to read.
    expression_gains: dict[str, float] = field(default_factory=dict)
    # The expression geometry file this generator expects its input warped with (trained on warped input), by name
    # beside the weights file; "" = plain crops. The pipeline and evaluate use it unless told otherwise.
    geometry: str = ""
    # The expression texture file (usgan.texture) applied after the warp, by name beside the weights file; "" = none.
    texture: str = ""
    # Per-target gains of the change when the input is warped and textured: there the generator refines the texture
    # rather than painting the expression itself, and needs less (0: the texture alone). Unset targets: the gains
    # above.
    refine_gains: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.edit_gain <= MAX_EDIT_GAIN:
            raise ConfigError(f"edit_gain must be in (0, {MAX_EDIT_GAIN}], got {self.edit_gain}")
        check_expression_numbers(self.expression_gains, "expression_gains", ConfigError, 0, MAX_EDIT_GAIN,
                                 open_low=True)
        check_expression_numbers(self.refine_gains, "refine_gains", ConfigError, 0, MAX_EDIT_GAIN)

    def gain_of(self, expression: str, refine: bool = False) -> float:
        """The edit gain for edits towards expression (its override, else edit_gain); refine: on textured input."""
        if refine and expression in self.refine_gains:
            return float(self.refine_gains[expression])
        return float(self.expression_gains.get(expression, self.edit_gain))


def gain_text(edit_gain: float, expression_gains: dict[str, float]) -> str:
    """'1.1' or '1.1, happy 1.5': a file's edit gains for reports and logs."""
    return f"{edit_gain:g}" + "".join(f", {name} {gain:g}" for name, gain in expression_gains.items())


def parse_expression_gains(items: Sequence[str]) -> dict[str, float]:
    """{"happy": 1.5, ...} from ["happy=1.5", ...] (any accepted expression spelling); a bad item is a ConfigError."""
    gains: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            gain = float(value)
        except ValueError:
            gain = None
        if not sep or gain is None:
            raise ConfigError(f"expression gain {item!r}: expected EXPRESSION=GAIN, e.g. happy=1.5")
        gains[parse_expression(name)] = gain
    return gains


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors plus a JSON metadata header atomically."""
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: safetensors_write(save_file, contiguous, tmp, header))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by save_tensors; any problem is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from error
    return tensors, read_metadata(header, path, CheckpointError, "safetensors file")


def read_metadata(header: dict[str, str], path: Path, error: type[UserError], kind: str) -> dict[str, Any]:
    """Our JSON metadata from a file's string header (safetensors or ONNX); missing or corrupt is error naming path."""
    if METADATA_KEY not in header:
        raise error(f"{path}: {kind} without US-GAN metadata (not one of our files)")
    try:
        return json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as problem:
        raise error(f"{path}: corrupt US-GAN metadata ({problem})") from problem


def named_geometry(weights: Path, key: str = "geometry") -> Path | None:
    """The geometry file a generator file or training checkpoint names in its header ("geometry", resolved beside
    the weights), or None when it names none; CheckpointError naming the file when the header cannot be read.
    pipeline.geometry and evaluate use it for their "auto"; key "texture" gives the texture file it names."""
    try:
        with safe_open(str(weights), "np") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights}: cannot read its header ({error})") from error
    if METADATA_KEY not in header:
        return None  # not one of our files: its loader says so
    name = read_metadata(header, Path(weights), CheckpointError, "safetensors file").get(key)
    return Path(weights).parent / name if isinstance(name, str) and name else None


def generator_metadata(info: WeightsInfo) -> dict[str, Any]:
    mapping = dataclasses.asdict(info)
    mapping["expressions"] = list(info.expressions)
    return {"format": FORMAT_GENERATOR, "version": 1, **mapping}


def save_generator(path: Path, generator: Generator, info: WeightsInfo, fp16: bool = False) -> None:
    """Write generator weights (optionally fp16) with their WeightsInfo header."""
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in generator.state_dict().items()}
    save_tensors(path, tensors, generator_metadata(dataclasses.replace(info, generator=generator.config)))


def read_weights_info(path: Path, metadata: dict[str, Any]) -> WeightsInfo:
    if metadata.get("format") != FORMAT_GENERATOR:
        raise CheckpointError(f"{path}: not a US-GAN generator file (format {metadata.get('format')!r})")
    fields = {k: v for k, v in metadata.items() if k not in ("format", "version")}
    try:
        return from_mapping(WeightsInfo, fields, f"{path}: bad metadata")
    except ConfigError as error:
        raise CheckpointError(str(error) if str(error).startswith(str(path)) else f"{path}: bad metadata: {error}") \
            from error


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with prefix ('G.', 'D.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def train_state_generator(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """The generator tensors and a WeightsInfo from a training checkpoint (RUN_DIR/checkpoints/step_N.safetensors)."""
    try:
        model = metadata["config"]["model"]
        config = from_mapping(GeneratorConfig, model["generator"], f"{path}: config.model.generator")
        info = WeightsInfo(generator=config, image_size=model["image_size"], step=metadata["step"],
                           dataset=metadata.get("dataset", "unknown"), geometry=metadata.get("geometry", ""),
                           texture=metadata.get("texture", ""))
    except (KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{path}: training checkpoint with a bad header ({error})") from error
    return strip_prefix(tensors, "G."), info


def load_generator(path: Path, device: str | torch.device = "cpu") -> tuple[Generator, WeightsInfo]:
    """Load a generator file, or the generator of a training checkpoint, as an fp32 Generator in eval mode."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") == FORMAT_TRAIN_STATE:
        tensors, info = train_state_generator(Path(path), tensors, metadata)
    else:
        info = read_weights_info(Path(path), metadata)
    if tuple(info.expressions) != EXPRESSIONS:
        raise CheckpointError(f"{path}: expression list {list(info.expressions)} differs from {list(EXPRESSIONS)}")
    generator = Generator(info.generator)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the generator {info.generator}: "
                              f"{state_dict_problem(error)}") from error
    broken = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f"{path}: weights contain NaN or infinite values ({', '.join(broken[:3])}); "
                              "the file is damaged")
    return generator.to(device).eval(), info


def state_dict_problem(error: RuntimeError) -> str:
    """The first concrete problem of load_state_dict's message ('size mismatch for main.0.weight: ...'), one line."""
    details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return (details or [str(error).splitlines()[0]])[0].rstrip(".")


def average_generators(paths: list[Path]) -> tuple[Generator, WeightsInfo]:
    """The mean of several generators' weights (iterate averaging over a run's checkpoints), as one Generator.

    Float tensors, the norms' running statistics included, are averaged; integer counters and the header come from
    the last file. All files must hold the same architecture. On TFEID the mean of a run's last checkpoints scored
    between its best and worst single ones (weights/MODEL_CARD.md).
    """
    if not paths:
        raise CheckpointError("no generator files to average")
    loaded = [load_generator(path) for path in paths]
    generator, info = loaded[-1]
    for path, (_, other) in zip(paths, loaded):
        if (other.generator, other.image_size) != (info.generator, info.image_size):
            raise CheckpointError(f"{path}: generator {other.generator} at {other.image_size} px differs "
                                  f"from {paths[-1]}'s {info.generator} at {info.image_size} px; cannot average")
    states = [g.state_dict() for g, _ in loaded]
    generator.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                               for k, v in states[-1].items()})
    if len(paths) > 1:
        info = dataclasses.replace(info, notes={**info.notes, "averaged": [Path(p).name for p in paths]})
    return generator, info

def refuse_overwrite(input_path: Path, out_path: Path) -> None:
    """Raise CheckpointError when out_path names the input file, so a conversion can never destroy its source."""
    same = Path(out_path).resolve() == Path(input_path).resolve()
    if same or (Path(out_path).exists() and Path(input_path).exists() and os.path.samefile(input_path, out_path)):
        raise CheckpointError(f"{out_path}: output path is the input file; choose another output")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
