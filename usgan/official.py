"""Importing the official US-GAN generator checkpoint: a torch.save'd state_dict, the only place torch.load is used.

It is read with weights_only=True (no pickled code runs), checked against our Generator with strict keys, its
expression input channels are put in our canonical order, and it is written as one of our safetensors files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from usgan.checkpoint import CheckpointError, WeightsInfo, file_sha256, refuse_overwrite, save_generator
from usgan.expressions import EXPRESSIONS, OFFICIAL_LABEL_ORDER
from usgan.model import Generator, GeneratorConfig

OFFICIAL_DATASET = "official US-GAN checkpoint"
OFFICIAL_LICENSE = "as published by the US-GAN authors (research use only)"
OFFICIAL_WRAPPER_KEYS = ("state_dict", "generator", "G")


def _summarise_load_error(error: Exception) -> str:
    """One short line from torch.load's (often multi-paragraph) error message."""
    text = str(error)
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if refused:  # weights_only met something other than tensors and plain containers
        return "weights_only loading refused it: " + refused.group(1).split(" was not ")[0].strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", first)  # c10's location prefix says nothing to users
    return f"{type(error).__name__}: {first.split('. ')[0][:160]}" if first else type(error).__name__


TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, or its legacy pickle (protocol 2+)


def check_torch_save_file(path: Path) -> None:
    """Refuse anything that is not a torch.save file before torch.load sees it (torch.load also reads safetensors
    files, which would be relabelled as if their expressions were in the official order)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) == 8 and head[:1] != b"\x80" and int.from_bytes(head, "little") < 1 << 32:
        with open(path, "rb") as handle:
            if handle.read(9)[8:9] == b"{":
                raise CheckpointError(f"{path}: a safetensors file, not the official checkpoint (a torch.save file); "
                                      "files made by this tool are used with --weights as they are")
    if not head.startswith(TORCH_SAVE_MAGIC):
        raise CheckpointError(f"{path}: not the official US-GAN checkpoint (a torch.save file)")


def read_official_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a torch.save'd generator state_dict without running pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    check_torch_save_file(path)
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    # torch.load raises many unrelated types on malformed input (EOFError, KeyError, UnpicklingError, miniz
    # RuntimeErrors...); every one of them means "not a readable checkpoint".
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_summarise_load_error(error)})") from error
    state = _unwrap_state_dict(loaded)
    if state is None:
        raise CheckpointError(f"{path}: not a state_dict of tensors (found {type(loaded).__name__})")
    return state


def _unwrap_state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The tensor mapping inside `loaded` (bare, or under one OFFICIAL_WRAPPER_KEYS key), 'module.' prefix removed."""
    if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        inner = [loaded[k] for k in OFFICIAL_WRAPPER_KEYS if isinstance(loaded.get(k), dict)]
        loaded = inner[0] if len(inner) == 1 else None
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return None
    if all(str(k).startswith("module.") for k in loaded):  # saved from a DataParallel/DDP wrapper
        loaded = {str(k)[len("module."):]: v for k, v in loaded.items()}
    return {str(k): v for k, v in loaded.items()}


def infer_generator_config(path: Path, state: dict[str, torch.Tensor]) -> GeneratorConfig:
    """GeneratorConfig from official key names: width and expressions from main.0.weight, blocks from main.N.main.*."""
    first = state.get("main.0.weight")
    if first is None or first.ndim != 4 or first.shape[1] <= 3:  # <= 3 input channels: e.g. a discriminator
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(f"{path}: not a US-GAN generator state_dict (keys start {sample})")
    num_expressions = int(first.shape[1]) - 3
    if num_expressions != len(EXPRESSIONS):
        raise CheckpointError(
            f"{path}: generator has {num_expressions} expression inputs, US-GAN needs {len(EXPRESSIONS)} "
            f"({', '.join(EXPRESSIONS)}); is it a StarGAN checkpoint for another data set?"
        )
    blocks = {m.group(1) for key in state if (m := re.fullmatch(r"main\.(\d+)\.main\.0\.weight", key))}
    return GeneratorConfig(conv_dim=int(first.shape[0]), num_expressions=num_expressions, residual_blocks=len(blocks))


def _official_generator(path: Path, state: dict[str, torch.Tensor]) -> Generator:
    generator = Generator(infer_generator_config(path, state))
    try:
        generator.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: weights do not fit the US-GAN generator: {detail}") from error
    if not all(torch.isfinite(p).all() for p in generator.parameters()):
        raise CheckpointError(f"{path}: weights contain NaN or infinite values (corrupt file?)")
    return generator.eval()


def reorder_expression_channels(generator: Generator, source_order: tuple[str, ...]) -> None:
    """Permute the first conv's expression input channels from source_order to EXPRESSIONS order (in place)."""
    if tuple(source_order) == EXPRESSIONS:
        return
    weight = generator.main[0].weight  # (64, 3 + E, 7, 7): channels 3.. are the one-hot expression maps
    columns = [3 + list(source_order).index(name) for name in EXPRESSIONS]
    with torch.no_grad():
        weight[:, 3:] = weight[:, columns].clone()


def import_official(
    ckpt_path: Path, out_path: Path, image_size: int = 128, label_order: tuple[str, ...] = OFFICIAL_LABEL_ORDER,
) -> WeightsInfo:
    """Convert the official generator checkpoint (e.g. usgan_87_G.ckpt) into our safetensors format.

    label_order names the expression of each one-hot input channel of the checkpoint (default: the official
    code's sorted-folder-code order); the channels are permuted so our files always use EXPRESSIONS order.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if image_size < 4 or image_size % 4:
        raise CheckpointError(f"{ckpt_path}: image size {image_size} must be a positive multiple of 4")
    refuse_overwrite(ckpt_path, out_path)
    generator = _official_generator(ckpt_path, read_official_state_dict(ckpt_path))
    reorder_expression_channels(generator, label_order)
    info = WeightsInfo(
        generator=generator.config,
        image_size=image_size,
        dataset=OFFICIAL_DATASET,
        license=OFFICIAL_LICENSE,
        notes={"source_file": ckpt_path.name, "source_sha256": file_sha256(ckpt_path),
               "source_label_order": list(label_order)},
    )
    save_generator(out_path, generator, info)
    return info
