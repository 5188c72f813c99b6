"""One training iteration: the LR schedule, the step's batch (its own RNG: flips, targets, pairs, jitter), a D update
and, every n_critic-th step, a G update, under AMP on CUDA.

The maths of each update is usgan.training.losses'; this module applies it with the optimisers and AMP scalers.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from usgan.expressions import EXPRESSIONS
from usgan.training import losses
from usgan.training.config import OptimConfig, TargetMode, TrainConfig
from usgan.training.data import (
    PairSource, colour_jitter, colour_params, draw_pairs, flip_mask, geometry_jitter, geometry_params,
)
from usgan.training.distributed import DistInfo
from usgan.training.state import TrainState
from usgan.training.warp import WarpSource, batch_points, jitter_points, partner_points, warp_towards


def use_amp(config: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" and config.amp != "none"


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if not use_amp(config, device):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


def make_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 has float32's range and does not."""
    return torch.amp.GradScaler("cuda") if use_amp(config, device) and config.amp == "fp16" else None


# ------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, optim: OptimConfig) -> float:
    """1 until decay_start, then linearly down to 0 at total_steps (StarGAN's schedule, without its steps)."""
    if step < optim.decay_start or optim.total_steps == optim.decay_start:
        return 1.0
    return max(0.0, (optim.total_steps - step) / (optim.total_steps - optim.decay_start))


def g_warmup_factor(step: int, optim: OptimConfig) -> float:
    """G's LR ramp after the D-only warm-up: 1/w at step w, reaching 1 at step 2w - 1 (1 without warm-up)."""
    if optim.warmup_steps == 0:
        return 1.0
    return min(1.0, max(0.0, (step - optim.warmup_steps + 1) / optim.warmup_steps))


def updates_generator(step: int, optim: OptimConfig) -> bool:
    """Whether step (0-based) ends with a G update: every n_critic-th step, none during the D-only warm-up."""
    return step >= optim.warmup_steps and (step + 1) % optim.n_critic == 0


def set_learning_rates(state: TrainState, optim: OptimConfig) -> None:
    factor = lr_factor(state.step, optim)
    for group in state.g_optim.param_groups:
        group["lr"] = optim.g_lr * factor * g_warmup_factor(state.step, optim)
    for group in state.d_optim.param_groups:
        group["lr"] = optim.d_lr * factor


# ---------------------------------------------------------------------------------------------- batch


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The step's own RNG (flips, targets, GP points, pairs, jitter): a pure function of (seed, rank, step), so a
    resumed run draws the same numbers."""
    digest = hashlib.sha256(f"usgan:{seed}:{rank}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_targets(labels: Tensor, generator: torch.Generator, mode: TargetMode) -> Tensor:
    """Target expressions: the batch's labels permuted (StarGAN), or uniformly random ones."""
    if mode == "permute":
        return labels[torch.randperm(labels.shape[0], generator=generator)]
    return torch.randint(0, len(EXPRESSIONS), labels.shape, generator=generator)


@dataclass(frozen=True)
class StepBatch:
    """One step's inputs on the device: images (N, 3, S, S), labels (N,), one-hots (N, E)."""

    x_real: Tensor
    label_org: Tensor
    label_trg: Tensor
    c_org: Tensor
    c_trg: Tensor
    alpha: Tensor  # (N, 1, 1, 1) gradient-penalty interpolation weights
    x_pair: Tensor | None = None  # (N, 3, S, S) same-person photo with the target expression, where pair_mask
    pair_mask: Tensor | None = None  # (N,) bool
    x_input: Tensor | None = None  # G's input when it is not x_real: x_real warped towards the target
    back_grid: Tensor | None = None  # (N, S, S, 2) the inverse warp, for the cycle

    @property
    def generator_input(self) -> Tensor:
        return self.x_real if self.x_input is None else self.x_input


def prepare_batch(
    batch: tuple[Tensor, ...], config: TrainConfig, info: DistInfo, step: int, pairs: PairSource | None = None,
    warp: WarpSource | None = None,
) -> StepBatch:
    """Augment and draw targets on the CPU with the step's RNG, then move everything to the device.

    batch is (images, labels) or (images, labels, dataset indices); the indices are needed for paired targets and
    for the landmarks of warped input.
    """
    images, labels, *rest = batch
    if images.ndim != 4 or images.shape[1:] != (3, config.model.image_size, config.model.image_size):
        raise ValueError(f"batch images have shape {tuple(images.shape)}, expected (N, 3, S, S) with S = image_size")
    rng = step_generator(config.seed, info.rank, step)
    flip = flip_mask(images.shape[0], rng)
    images = torch.where(flip, images.flip(3), images)
    targets = sample_targets(labels, rng, config.target_labels)
    alpha = torch.rand(images.shape[0], 1, 1, 1, generator=rng)
    x_pair = pair_mask = partner = None
    if pairs is not None and rest and config.pair_fraction > 0:
        targets, x_pair, pair_mask, partner = draw_pairs(rest[0], targets, pairs, config.pair_fraction, rng)
        x_pair = torch.where(flip, x_pair.flip(3), x_pair)  # mirrored with its source
    if config.colour_jitter > 0:  # drawn last, so runs without jitter keep their random stream
        colour = colour_params(images.shape[0], config.colour_jitter, rng)
        images = colour_jitter(images, colour)
        x_pair = None if x_pair is None else colour_jitter(x_pair, colour)
    points = None if warp is None else batch_points(warp, rest[0], flip.view(-1))
    goal = None if warp is None or warp.texture is None or partner is None else partner_points(warp, partner, flip)
    if config.geometry_jitter > 0:  # drawn after colour, so runs without it keep their random stream
        geometry = geometry_params(images.shape[0], config.geometry_jitter, rng)
        images = geometry_jitter(images, geometry)
        x_pair = None if x_pair is None else geometry_jitter(x_pair, geometry)
        points = None if points is None else jitter_points(points, geometry)
        goal = None if goal is None else jitter_points(goal, geometry)
    warped = None if points is None else warp_towards(warp, images, points, targets, goal, partner)
    if x_pair is not None:
        x_pair, pair_mask = x_pair.to(info.device), pair_mask.to(info.device)
    to = dict(device=info.device, non_blocking=True)
    labels, targets = labels.to(**to), targets.to(**to)
    return StepBatch(
        x_real=images.to(**to), label_org=labels, label_trg=targets,
        c_org=F.one_hot(labels, len(EXPRESSIONS)).float(), c_trg=F.one_hot(targets, len(EXPRESSIONS)).float(),
        alpha=alpha.to(**to), x_pair=x_pair, pair_mask=pair_mask,
        x_input=None if warped is None else warped.x_input.to(**to),
        back_grid=None if warped is None else warped.back_grid.to(**to),
    )


# -------------------------------------------------------------------------------------------- updates


def apply_gradients(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def update_discriminator(
    state: TrainState, batch: StepBatch, config: TrainConfig, device: torch.device, x_fake: Tensor | None = None,
) -> dict:
    """One D update on the batch's fakes: x_fake when given (the G update of this step reuses it), else G's output."""
    if x_fake is None:
        with torch.no_grad(), autocast(config, device):
            x_fake = state.raw_generator(batch.generator_input, batch.c_trg)
    grad_scale = state.d_scaler.get_scale() if state.d_scaler is not None else 1.0
    state.d_optim.zero_grad(set_to_none=True)
    with autocast(config, device):
        result = losses.discriminator_loss(
            state.discriminator, batch.x_real, batch.label_org, x_fake.float(), batch.alpha, config.loss, grad_scale,
        )
    apply_gradients(result.total, state.d_optim, state.d_scaler)
    return result.terms


def update_generator(
    state: TrainState, batch: StepBatch, config: TrainConfig, device: torch.device, x_fake: Tensor | None = None,
) -> dict:
    """One G update; x_fake is G(x_real, c_trg) with its graph, when the step computed it already."""
    # D is frozen and called unwrapped: its gradients are not needed and DDP would all-reduce them for nothing.
    state.raw_discriminator.requires_grad_(False)
    try:
        state.g_optim.zero_grad(set_to_none=True)
        with autocast(config, device):
            result = losses.generator_loss(
                state.generator, state.raw_discriminator, batch.x_real, batch.c_org, batch.c_trg, batch.label_trg,
                config.loss, batch.x_pair, batch.pair_mask, x_fake, batch.x_input, batch.back_grid,
            )
        apply_gradients(result.total, state.g_optim, state.g_scaler)
    finally:
        state.raw_discriminator.requires_grad_(True)
    return result.terms


def train_step(
    state: TrainState, batch: tuple[Tensor, ...], config: TrainConfig, info: DistInfo, pairs: PairSource | None = None,
    warp: WarpSource | None = None,
) -> dict:
    """One iteration at state.step: a D update, plus a G update every n_critic-th step; returns loss terms.

    On a step with a G update, G(x, c_trg) runs once, with its graph: D trains on it detached, then G's loss
    back-propagates through it (G has not changed in between, so this equals two separate forward passes).
    """
    set_learning_rates(state, config.optim)
    step_batch = prepare_batch(batch, config, info, state.step, pairs, warp)
    if not updates_generator(state.step, config.optim):
        return update_discriminator(state, step_batch, config, info.device)
    with autocast(config, info.device):
        x_fake = state.generator(step_batch.generator_input, step_batch.c_trg)
    terms = update_discriminator(state, step_batch, config, info.device, x_fake.detach())
    return terms | update_generator(state, step_batch, config, info.device, x_fake)
