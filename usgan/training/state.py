"""What a run carries from step to step, and its checkpoints: save, exact resume (weights, optimisers, AMP
scalers, RNG, sampler position), the checks a resume must pass, and starting a fresh run from given weights.

Resume policy: `--resume` continues from RUN_DIR's newest checkpoint, or starts fresh when there is none (so one
command can start and restart a job). Without `--resume`, a RUN_DIR that holds checkpoints is refused. A resumed
run must use the same config, except logging.*, data.workers, amp, optim.total_steps and optim.decay_start.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from usgan.checkpoint import (
    FORMAT_TRAIN_STATE, CheckpointError, WeightsInfo, load_generator, load_tensors, save_generator, save_tensors,
    strip_prefix,
)
from usgan.config import ConfigError, flatten, to_mapping
from usgan.errors import UserError
from usgan.model import Discriminator, Generator
from usgan.training.config import TrainConfig
from usgan.training.distributed import DistInfo

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.safetensors$")
# Config keys a resumed run may change: they do not alter what has been learned so far.
MUTABLE_ON_RESUME = ("logging.", "data.workers", "amp", "optim.total_steps", "optim.decay_start")
# Options of experiments that have left the trainer (docs/TRAINING_NOTES.md), at their "off" value: a checkpoint
# saved with one of them off resumes as if it had never existed; one saved with it on cannot be resumed.
RETIRED_OPTIONS = {
    "model.d_generated_class": False, "model.d_brow_critic": False, "loss.lambda_landmark": 0.0,
    "loss.lambda_classifier": 0.0, "loss.lambda_generated": 0.0, "register_to_reference": False, "classifier": "",
    "diff_augment": "",
}


@dataclass
class TrainState:
    """Everything that changes while training; generator/discriminator may be DDP wrappers."""

    generator: nn.Module
    discriminator: nn.Module
    g_optim: torch.optim.Adam
    d_optim: torch.optim.Adam
    g_scaler: torch.amp.GradScaler | None
    d_scaler: torch.amp.GradScaler | None
    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained on (per process)

    @property
    def raw_generator(self) -> Generator:
        return unwrap(self.generator)

    @property
    def raw_discriminator(self) -> Discriminator:
        return unwrap(self.discriminator)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


# ------------------------------------------------------------------------------------------ files


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in RUN_DIR, oldest first."""
    folder = checkpoint_dir(run_dir)
    found = [(CHECKPOINT_NAME.match(p.name), p) for p in folder.glob("step_*.safetensors")] if folder.is_dir() else []
    return sorted((int(m.group(1)), p) for m, p in found if m)


def find_resume_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None = fresh start); a run dir with checkpoints needs --resume."""
    found = list_checkpoints(run_dir)
    if found and not resume:
        raise UserError(f"{run_dir}: already has checkpoints (latest step {found[-1][0]}); "
                        "pass --resume to continue that run, or choose another --out")
    return found[-1][1] if found else None


# ------------------------------------------------------------------------------- optimisers and RNG


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    """Adam's per-parameter tensors as flat safetensors keys, and its param groups as JSON-able dicts."""
    state = optimizer.state_dict()
    tensors = {
        f"{prefix}.{index}.{name}": value for index, slot in state["state"].items() for name, value in slot.items()
    }
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], groups: list) -> None:
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    groups = [{**group, "betas": tuple(group["betas"])} for group in groups]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def rng_tensors(device: torch.device) -> dict[str, Tensor]:
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def rng_metadata() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(tensors: dict[str, Tensor], metadata: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)
    kind, keys, pos, has_gauss, cached = metadata["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = metadata["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------- save and load


def state_tensors(state: TrainState, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {f"G.{k}": v for k, v in state.raw_generator.state_dict().items()}
    tensors |= {f"D.{k}": v for k, v in state.raw_discriminator.state_dict().items()}
    g_tensors, g_groups = optimizer_tensors("optim_g", state.g_optim)
    d_tensors, d_groups = optimizer_tensors("optim_d", state.d_optim)
    tensors |= g_tensors | d_tensors | rng_tensors(device)
    scalers = {"g": state.g_scaler and state.g_scaler.state_dict(), "d": state.d_scaler and state.d_scaler.state_dict()}
    return tensors, {"optim_groups": {"g": g_groups, "d": d_groups}, "scalers": scalers}


def save_checkpoint(state: TrainState, config: TrainConfig, run_dir: Path, info: DistInfo, dataset: str) -> Path:
    """Write checkpoints/step_N.safetensors, RUN_DIR/generator.safetensors, and prune old checkpoints."""
    tensors, extra = state_tensors(state, info.device)
    metadata = {
        "format": FORMAT_TRAIN_STATE, "version": 1, "step": state.step, "epoch": state.epoch,
        "batches_done": state.batches_done, "world_size": info.world_size, "dataset": dataset,
        "lr": {"g": state.g_optim.param_groups[0]["lr"], "d": state.d_optim.param_groups[0]["lr"]},
        "config": to_mapping(config), "rng": rng_metadata(), **extra,
    }
    geometry = str(Path(config.geometry_model).expanduser().resolve()) if config.geometry_model else ""
    if geometry:  # the generator expects input warped with this file: process and evaluate use it
        metadata["geometry"] = geometry
    texture = str(Path(config.texture_model).expanduser().resolve()) if config.texture_model else ""
    if texture:  # and textured with this one
        metadata["texture"] = texture
    path = checkpoint_dir(run_dir) / f"step_{state.step:08d}.safetensors"
    save_tensors(path, tensors, metadata)
    info_g = WeightsInfo(image_size=config.model.image_size, step=state.step, dataset=dataset, geometry=geometry,
                         texture=texture)
    save_generator(Path(run_dir) / "generator.safetensors", state.raw_generator, info_g)
    for _, old in list_checkpoints(run_dir)[: -config.logging.keep_checkpoints]:
        old.unlink(missing_ok=True)
    return path


def without_retired_options(saved: dict[str, Any], path: Path) -> dict[str, Any]:
    """A checkpoint's flattened config less the RETIRED_OPTIONS it has off; refuses one that has any of them on."""
    used = {k: v for k, v in saved.items() if k in RETIRED_OPTIONS and v != RETIRED_OPTIONS[k]}
    if used:
        options = ", ".join(f"{k}: {v!r}" for k, v in used.items())
        raise ConfigError(f"{path}: trained with {options}, which this trainer no longer has "
                          "(docs/TRAINING_NOTES.md names the commit that did)")
    return {k: v for k, v in saved.items() if k not in RETIRED_OPTIONS}


def check_resumable(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with a config that changes what the checkpoint was trained as.

    A key the checkpoint's config lacks is an option added to the code since it was saved: it was trained with
    that option's default, which is what the comparison uses.
    """
    now = flatten(to_mapping(config))
    then = flatten(to_mapping(TrainConfig())) | without_retired_options(flatten(saved), path)
    keys = sorted(set(now) | set(then))
    changed = [k for k in keys if now.get(k) != then.get(k) and not k.startswith(MUTABLE_ON_RESUME)]
    if changed:
        diffs = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"{path}: cannot resume with a different config ({diffs}); "
                          "use the run's config (RUN_DIR/config.yaml) or a new --out")


def load_train_state(path: Path, hint: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A training checkpoint's tensors and metadata; any other file is a one-line CheckpointError (plus hint)."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT_TRAIN_STATE:
        raise CheckpointError(f"{path}: not a US-GAN training checkpoint (format {metadata.get('format')!r}){hint}")
    return tensors, metadata


def load_checkpoint(state: TrainState, config: TrainConfig, path: Path, info: DistInfo) -> None:
    """Restore models, optimisers, scalers, RNG, step and sampler position from a checkpoint (in place)."""
    tensors, metadata = load_train_state(path)
    check_resumable(config, metadata["config"], path)
    state.raw_generator.load_state_dict(strip_prefix(tensors, "G."), strict=True)
    state.raw_discriminator.load_state_dict(strip_prefix(tensors, "D."), strict=True)
    restore_optimizer(state.g_optim, "optim_g", tensors, metadata["optim_groups"]["g"])
    restore_optimizer(state.d_optim, "optim_d", tensors, metadata["optim_groups"]["d"])
    for scaler, saved in ((state.g_scaler, metadata["scalers"]["g"]), (state.d_scaler, metadata["scalers"]["d"])):
        if scaler is not None and saved:
            scaler.load_state_dict(saved)
    restore_rng(tensors, metadata["rng"], info.device)
    state.step, state.epoch, state.batches_done = metadata["step"], metadata["epoch"], metadata["batches_done"]
    if metadata["world_size"] != info.world_size:
        log.warning("%s: saved with %d processes, resuming with %d: the data order will differ from an "
                    "uninterrupted run", path, metadata["world_size"], info.world_size)


def init_generator(state: TrainState, config: TrainConfig, path: Path) -> None:
    """Start a fresh run's generator from a generator file (fine-tuning); its architecture must match the config.

    Only residual_blur (no weights) may differ: a generator trained without the low-pass can be fine-tuned with it.
    """
    generator, _ = load_generator(path)
    wanted = config.model.generator
    if dataclasses.replace(generator.config, residual_blur=wanted.residual_blur) != wanted:
        raise ConfigError(f"{path}: generator {generator.config} differs from the config's {config.model.generator}")
    state.raw_generator.load_state_dict(generator.state_dict(), strict=True)  # copies onto the run's device


def init_critic(state: TrainState, path: Path) -> None:
    """Start a fresh run's critic from a training checkpoint's D; its architecture must match the run's."""
    tensors, _ = load_train_state(path, "; --init-critic needs RUN_DIR/checkpoints/step_N.safetensors")
    saved = strip_prefix(tensors, "D.")
    own = state.raw_discriminator.state_dict()
    mismatched = sorted(k for k in own.keys() | saved.keys() if k not in saved or k not in own
                        or saved[k].shape != own[k].shape)
    if mismatched:
        raise ConfigError(f"{path}: its critic does not fit the config's model (differs at {', '.join(mismatched)})")
    state.raw_discriminator.load_state_dict(saved, strict=True)  # copies onto the run's device
