"""Checkpoint I/O: safetensors files with a JSON metadata header. No pickle is ever executed."""

from __future__ import annotations

from usgan.errors import UserError

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from usgan.config import ConfigError, from_mapping
from usgan.expressions import EXPRESSIONS
from usgan.model import Generator, GeneratorConfig

FORMAT_GENERATOR = "usgan-generator"
METADATA_KEY = "usgan"
NORMALIZATION = "RGB, float in [-1, 1] = pixel / 127.5 - 1"
DEFAULT_LICENSE = "research use only (trained on TFEID; see MODEL_CARD.md)"


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


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path) and rename the result to path, so no half-written file is ever left at path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary user files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors plus a JSON metadata header atomically."""
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=header))


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
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without US-GAN metadata (not one of our checkpoints)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt metadata header ({error})") from error
    return tensors, metadata


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
        return from_mapping(WeightsInfo, fields, str(path))
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path}: bad metadata: {error}") from error


def load_generator(path: Path, device: str | torch.device = "cpu") -> tuple[Generator, WeightsInfo]:
    """Load one of our generator files as an fp32 Generator in eval mode."""
    tensors, metadata = load_tensors(path)
    info = read_weights_info(Path(path), metadata)
    if tuple(info.expressions) != EXPRESSIONS:
        raise CheckpointError(f"{path}: expression list {list(info.expressions)} differs from {list(EXPRESSIONS)}")
    generator = Generator(info.generator)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the generator: {str(error).splitlines()[0]}") from error
    return generator.to(device).eval(), info
