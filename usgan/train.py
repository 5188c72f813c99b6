"""US-GAN training: typed config, setup, one train step, sample grids, safetensors checkpoints and exact resume.

One code path for a CPU, one GPU, or N GPUs on M nodes under torchrun (DDP + DistributedSampler; rank 0 logs
and saves). The losses live in usgan.losses; this module owns optimisers, AMP, DDP, the schedule and I/O.

Resume policy: `--resume` continues from RUN_DIR's newest checkpoint, or starts fresh when there is none (so one
command can start and restart a job). Without `--resume`, a RUN_DIR that holds checkpoints is refused. A resumed
run must use the same config, except logging.*, data.workers, amp, optim.total_steps and optim.decay_start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from usgan import losses
from usgan.augment import AugmentedCritic, parse_policy
from usgan.checkpoint import (
    FORMAT_TRAIN_STATE, CheckpointError, WeightsInfo, atomic_write, load_generator, load_tensors, save_generator,
    save_tensors, strip_prefix,
)
from usgan.config import ConfigError, flatten, load_config, to_mapping
from usgan.data import (
    DataConfig, FaceDataset, ResumableSampler, colour_jitter, colour_params, flip_mask, geometry_jitter,
    geometry_params, load_image, load_samples, load_warped, partner_table, reference_indices,
    register_to_reference, split_samples, summarize_split,
)
from usgan.dataset import DataError, Sample, scan_dataset
from usgan.distributed import DistInfo, any_process, barrier, init_distributed, shutdown_distributed
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.classifier import FrozenClassifier, load_classifier
from usgan.landmarks import LandmarkGuide, LandmarkModel, build_guide
from usgan.model import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

log = logging.getLogger(__name__)

AmpMode = Literal["none", "bf16", "fp16"]
TargetMode = Literal["permute", "random"]
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.safetensors$")
# Registration warps are fitted at this size whatever the training size (they are in resolution-free units).
REGISTRATION_SIZE = 64
# Config keys a resumed run may change: they do not alter what has been learned so far.
MUTABLE_ON_RESUME = ("logging.", "data.workers", "amp", "optim.total_steps", "optim.decay_start")


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    generator: GeneratorConfig = GeneratorConfig()
    image_size: int = 128
    d_conv_dim: int = 64
    d_strided_layers: int = 6
    d_generated_class: bool = False  # a "generated" logit in D's expression head (loss.lambda_generated trains it)
    d_brow_critic: bool = False  # a second critic with its own expression head on the brows and eyes

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size % 2**self.d_strided_layers:
            raise ConfigError(
                f"model.image_size {self.image_size} must be divisible by 4 and by 2**d_strided_layers "
                f"({2**self.d_strided_layers})"
            )

    def discriminator(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(
            image_size=self.image_size, conv_dim=self.d_conv_dim,
            num_expressions=self.generator.num_expressions, strided_layers=self.d_strided_layers,
            generated_class=self.d_generated_class, brow_critic=self.d_brow_critic,
        )


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G and D; one G update per n_critic D updates; LR decays linearly to 0 from decay_start."""

    g_lr: float = 1e-4
    d_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 5
    batch_size: int = 8
    total_steps: int = 200_000
    decay_start: int = 100_000
    # For fine-tuning (--init-generator): the first warmup_steps steps update D only, so a fresh critic learns the
    # given generator's fakes before G follows it; then G's LR ramps linearly from 0 over another warmup_steps.
    # Without it, a fresh critic's arbitrary gradients wreck a trained G within ~100 updates (checkerboards).
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("g_lr", "d_lr"):
            if not isinstance(getattr(self, name), (int, float)):  # YAML 1.1 reads 2e-4 (no dot) as a string
                raise ConfigError(f"optim.{name} must be a number, got {getattr(self, name)!r} (write 2.0e-4)")
        if self.n_critic < 1 or self.batch_size < 1 or self.total_steps < 1:
            raise ConfigError("optim.n_critic, optim.batch_size and optim.total_steps must be >= 1")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.decay_start <= self.total_steps:
            raise ConfigError(f"optim.decay_start {self.decay_start} must be in [0, total_steps {self.total_steps}]")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {list(self.betas)}")


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = 10
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_rows: int = 8

    def __post_init__(self) -> None:
        if min(self.log_every, self.sample_every, self.checkpoint_every, self.keep_checkpoints, self.sample_rows) < 1:
            raise ConfigError("logging.* values must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    loss: losses.LossConfig = losses.LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    logging: LoggingConfig = LoggingConfig()
    amp: AmpMode = "bf16"  # CUDA only; the CPU always trains in float32
    target_labels: TargetMode = "permute"  # permute the batch's labels (StarGAN) or draw random expressions
    seed: int = 0  # weight init and the per-step randomness (targets, flips, GP points)
    # Share of each batch whose target is the expression of another photo of the same person, which then gets
    # loss.lambda_pair's paired guidance (0 = the paper's unpaired recipe).
    pair_fraction: float = 0.0
    # Per-image colour jitter (white balance, exposure, contrast; usgan.data.colour_params), the same on an image
    # and its paired target. 0 = off (the paper); 1 = gains in [0.75, 1.25].
    colour_jitter: float = 0.0
    # Per-image rotation / scale / shift (usgan.data.geometry_params), the same on an image and its paired target.
    # 0 = off (the paper); 1 = up to 6 degrees, 6% scale and 4% shift.
    geometry_jitter: float = 0.0
    # Register every training photo to its person's reference photo (usgan.data.register_to_reference) before
    # training, so that a paired target does not also differ from its source by the alignment of the crop.
    register_to_reference: bool = False
    # The frozen expression classifier of loss.lambda_classifier (`cli.py train-classifier`; usgan.classifier).
    classifier: str = ""
    # Differentiable augmentation of every critic input, real or generated (usgan.augment; DiffAugment), e.g.
    # "translation,cutout"; "" = off (the paper).
    diff_augment: str = ""

    def __post_init__(self) -> None:
        if self.loss.lambda_classifier > 0 and not self.classifier:
            raise ConfigError("loss.lambda_classifier > 0 needs classifier: the file of `cli.py train-classifier`")
        if (self.loss.lambda_generated > 0) != self.model.d_generated_class:
            raise ConfigError("loss.lambda_generated > 0 and model.d_generated_class: true go together (the "
                              "weight trains the critic's generated class)")
        if not 0 <= self.pair_fraction <= 1:
            raise ConfigError(f"pair_fraction must be in [0, 1], got {self.pair_fraction}")
        if not 0 <= self.colour_jitter <= 2:
            raise ConfigError(f"colour_jitter must be in [0, 2], got {self.colour_jitter}")
        if not 0 <= self.geometry_jitter <= 2:
            raise ConfigError(f"geometry_jitter must be in [0, 2], got {self.geometry_jitter}")
        parse_policy(self.diff_augment)
        if self.amp not in get_args(AmpMode):
            raise ConfigError(f"amp must be one of {', '.join(get_args(AmpMode))}, got {self.amp!r}")
        if self.target_labels not in get_args(TargetMode):
            choices = ", ".join(get_args(TargetMode))
            raise ConfigError(f"target_labels must be one of {choices}, got {self.target_labels!r}")


@dataclass(frozen=True)
class RunOptions:
    """Per-invocation settings that are not part of the run's identity."""

    data_dir: Path
    run_dir: Path
    resume: bool = False
    max_steps: int | None = None  # stop at this global step (the LR schedule still follows optim.total_steps)
    use_cuda: bool = True
    # Fine-tune: a fresh run starts its generator from these weights (D and the optimisers start fresh).
    init_generator: Path | None = None
    # Fine-tune: a fresh run starts its critic from this training checkpoint's D (the optimisers start fresh).
    init_critic: Path | None = None


def parse_set_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """'optim.g_lr=2e-4' -> {'optim.g_lr': 2e-4}; values are parsed as YAML scalars."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. optim.g_lr=2e-4")
        overrides[key.strip()] = parse_scalar(value)
    return overrides


def parse_scalar(text: str) -> Any:
    """A YAML value, except that 2e-4 is a float (YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def load_train_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def config_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_mapping(config), sort_keys=False)


# ------------------------------------------------------------------------------------------------ setup


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


@dataclass(frozen=True)
class DataBundle:
    loader: DataLoader
    sampler: ResumableSampler
    fixed_images: Tensor  # (R, 3, S, S) in [-1, 1], the rows of every sample grid
    batches_per_epoch: int
    name: str
    pairs: PairSource | None = None  # set when config.pair_fraction > 0
    guide: LandmarkGuide | None = None  # set when config.loss.lambda_landmark > 0
    classifier: FrozenClassifier | None = None  # set when config.loss.lambda_classifier > 0


@dataclass(frozen=True)
class PairSource:
    """Where paired targets come from: the training samples and, per sample, its same-person partners."""

    samples: tuple[Sample, ...]
    partners: tuple[tuple[int, ...], ...]
    image_size: int
    warps: Tensor | None = None  # (len(samples), 4) registration warps, as the training images get


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def use_amp(config: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" and config.amp != "none"


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if not use_amp(config, device):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


def make_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 has float32's range and does not."""
    return torch.amp.GradScaler("cuda") if use_amp(config, device) and config.amp == "fp16" else None


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return module
    # InstanceNorm running stats are never used (eval normalises per image): no need to sync them every forward.
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def build_state(config: TrainConfig, info: DistInfo) -> TrainState:
    """Fresh G, D (same init on every rank), their Adam optimisers and AMP scalers."""
    torch.manual_seed(config.seed)
    generator = Generator(config.model.generator).to(info.device)
    discriminator = Discriminator(config.model.discriminator()).to(info.device)
    betas = tuple(config.optim.betas)
    return TrainState(
        generator=wrap_ddp(generator, info),
        discriminator=wrap_ddp(discriminator, info),
        g_optim=torch.optim.Adam(generator.parameters(), lr=config.optim.g_lr, betas=betas),
        d_optim=torch.optim.Adam(discriminator.parameters(), lr=config.optim.d_lr, betas=betas),
        g_scaler=make_scaler(config, info.device),
        d_scaler=make_scaler(config, info.device),
    )


def spread_over_expressions(samples: tuple[Sample, ...], count: int) -> list[Sample]:
    """Up to count samples, taking one per expression in turn, so grid rows show varied source expressions."""
    groups = [[s for s in samples if s.expression == name] for name in EXPRESSIONS]
    ordered = [s for row in zip_longest(*groups) for s in row if s is not None]
    return ordered[:count]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: Ctrl-C and SLURM/kill send SIGINT/SIGTERM to the whole process group. Workers ignore
    them, so the main process finishes its step and checkpoints (a worker dying first would crash it instead);
    the loader shuts its workers down when the main process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def setup_data(config: TrainConfig, data_dir: Path, info: DistInfo) -> DataBundle:
    split = split_samples(scan_dataset(data_dir), config.data, data_dir)
    global_batch = config.optim.batch_size * info.world_size
    if len(split.train) < global_batch:
        raise DataError(f"{data_dir}: {len(split.train)} training images, fewer than one batch ({global_batch})")
    warps = registration_warps(split.train, info.device) if config.register_to_reference else None
    dataset = FaceDataset(split.train, config.model.image_size, warps)
    sampler = ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=config.data.seed)
    loader = DataLoader(
        dataset, batch_size=config.optim.batch_size, sampler=sampler, num_workers=config.data.workers,
        drop_last=True, pin_memory=info.device.type == "cuda", persistent_workers=config.data.workers > 0,
        worker_init_fn=ignore_stop_signals,
    )
    rows = spread_over_expressions(split.val or split.train, config.logging.sample_rows)
    fixed = torch.stack([load_image(s.path, config.model.image_size) for s in rows])
    name = config.data.name or Path(data_dir).resolve().name
    pairs = None
    if config.pair_fraction > 0:
        pairs = PairSource(split.train, partner_table(split.train), config.model.image_size, warps)
        log.info("paired guidance: %d of %d training images have a same-person partner",
                 sum(bool(p) for p in pairs.partners), len(split.train))
    guide = None
    if config.loss.lambda_landmark > 0:
        guide = landmark_guide(split.train, config.model.image_size, info.device)
    classifier = None
    if config.loss.lambda_classifier > 0:
        classifier, metadata = load_classifier(Path(config.classifier).expanduser(), info.device)
        log.info("classifier guidance: %s (accuracy on its validation people: %s)", config.classifier,
                 metadata.get("val_accuracy", {}).get("overall", "n/a"))
    return DataBundle(loader, sampler, fixed, sampler.num_samples // config.optim.batch_size, name, pairs, guide,
                      classifier)


def landmark_guide(samples: tuple[Sample, ...], image_size: int, device: torch.device) -> LandmarkGuide:
    """The landmark model on device and the training photos' mean shape change per expression."""
    started = time.perf_counter()
    model = LandmarkModel.load().to(device)
    images, labels = (t.to(device) for t in load_samples(samples, image_size))
    guide = build_guide(model, images, labels, [s.identity for s in samples])
    size = guide.changes.norm(dim=2).mean(dim=1) * 100
    log.info("landmark guide from %d training images in %.1f s; mean landmark change from neutral, %% of the crop: %s",
             len(samples), time.perf_counter() - started,
             ", ".join(f"{name} {float(v):.2f}" for name, v in zip(EXPRESSIONS, size) if name != "neutral"))
    return guide


def registration_warps(samples: tuple[Sample, ...], device: torch.device) -> Tensor:
    """(N, 4) warps aligning each sample to its person's reference photo, fitted at REGISTRATION_SIZE on device."""
    started = time.perf_counter()
    images = torch.stack([load_image(s.path, REGISTRATION_SIZE) for s in samples]).to(device)
    references = images[list(reference_indices(samples))]
    warps = register_to_reference(images, references).cpu()
    mean = warps.abs().mean(dim=0)
    log.info("registered %d training images to their person's reference photo in %.1f s (mean |rotation| %.1f deg, "
             "|scale - 1| %.3f, |shift| %.3f)", len(samples), time.perf_counter() - started,
             float(mean[0].rad2deg()), float(mean[1]), float(mean[2:].mean()))
    return warps


def describe_data(config: TrainConfig, data_dir: Path) -> str:
    """The --dry-run data summary: images per expression and split."""
    split = split_samples(scan_dataset(data_dir), config.data, data_dir)
    return summarize_split(split)


# ------------------------------------------------------------------------------------------------- step


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


def step_generator(seed: int, rank: int, step: int, stream: str = "") -> torch.Generator:
    """The step's own RNG: a pure function of (seed, rank, step), so a resumed run draws the same numbers; each
    stream name gives an independent one (the default stream is the batch's: flips, targets, jitter)."""
    digest = hashlib.sha256(f"usgan:{seed}:{rank}:{step}{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_targets(labels: Tensor, generator: torch.Generator, mode: TargetMode) -> Tensor:
    """Target expressions: the batch's labels permuted (StarGAN), or uniformly random ones."""
    if mode == "permute":
        return labels[torch.randperm(labels.shape[0], generator=generator)]
    return torch.randint(0, len(EXPRESSIONS), labels.shape, generator=generator)


def apply_gradients(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


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
    augment: torch.Generator | None = None  # the step's stream for diff_augment, None when it is off


def critic_of(state: TrainState, batch: StepBatch, config: TrainConfig, wrapped: bool = True) -> losses.Critic:
    """The critic the losses call: D (wrapped for DDP, or not), behind diff_augment when that is on."""
    critic = state.discriminator if wrapped else state.raw_discriminator
    if batch.augment is None:
        return critic
    return AugmentedCritic(critic, parse_policy(config.diff_augment), batch.augment)


def draw_pairs(
    indices: Tensor, targets: Tensor, pairs: PairSource, fraction: float, rng: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Give the first `fraction` of the batch a same-person partner photo as target: (targets, x_pair, mask)."""
    targets = targets.clone()
    x_pair = torch.zeros(len(indices), 3, pairs.image_size, pairs.image_size)
    mask = torch.zeros(len(indices), dtype=torch.bool)
    choices = torch.rand(len(indices), generator=rng)  # drawn for every sample so the RNG use is fixed per step
    for i in range(round(fraction * len(indices))):
        partners = pairs.partners[int(indices[i])]
        if partners:
            index = partners[int(choices[i] * len(partners))]
            warp = None if pairs.warps is None else pairs.warps[index]
            x_pair[i] = load_warped(pairs.samples[index].path, pairs.image_size, warp)
            targets[i], mask[i] = pairs.samples[index].label, True
    return targets, x_pair, mask


def prepare_batch(
    batch: tuple[Tensor, ...], config: TrainConfig, info: DistInfo, step: int, pairs: PairSource | None = None,
) -> StepBatch:
    """Augment and draw targets on the CPU with the step's RNG, then move everything to the device.

    batch is (images, labels) or (images, labels, dataset indices); the indices are needed for paired targets.
    """
    images, labels, *rest = batch
    if images.ndim != 4 or images.shape[1:] != (3, config.model.image_size, config.model.image_size):
        raise ValueError(f"batch images have shape {tuple(images.shape)}, expected (N, 3, S, S) with S = image_size")
    rng = step_generator(config.seed, info.rank, step)
    flip = flip_mask(images.shape[0], rng)
    images = torch.where(flip, images.flip(3), images)
    targets = sample_targets(labels, rng, config.target_labels)
    alpha = torch.rand(images.shape[0], 1, 1, 1, generator=rng)
    x_pair = pair_mask = None
    if pairs is not None and rest and config.pair_fraction > 0:
        targets, x_pair, pair_mask = draw_pairs(rest[0], targets, pairs, config.pair_fraction, rng)
        x_pair = torch.where(flip, x_pair.flip(3), x_pair)  # mirrored with its source
    if config.colour_jitter > 0:  # drawn last, so runs without jitter keep their random stream
        colour = colour_params(images.shape[0], config.colour_jitter, rng)
        images = colour_jitter(images, colour)
        x_pair = None if x_pair is None else colour_jitter(x_pair, colour)
    if config.geometry_jitter > 0:  # drawn after colour, so runs without it keep their random stream
        geometry = geometry_params(images.shape[0], config.geometry_jitter, rng)
        images = geometry_jitter(images, geometry)
        x_pair = None if x_pair is None else geometry_jitter(x_pair, geometry)
    if x_pair is not None:
        x_pair, pair_mask = x_pair.to(info.device), pair_mask.to(info.device)
    to = dict(device=info.device, non_blocking=True)
    labels, targets = labels.to(**to), targets.to(**to)
    return StepBatch(
        x_real=images.to(**to), label_org=labels, label_trg=targets,
        c_org=F.one_hot(labels, len(EXPRESSIONS)).float(), c_trg=F.one_hot(targets, len(EXPRESSIONS)).float(),
        alpha=alpha.to(**to), x_pair=x_pair, pair_mask=pair_mask,
        augment=step_generator(config.seed, info.rank, step, ":augment") if config.diff_augment else None,
    )


def update_discriminator(
    state: TrainState, batch: StepBatch, config: TrainConfig, device: torch.device, x_fake: Tensor | None = None,
) -> dict:
    """One D update on the batch's fakes: x_fake when given (the G update of this step reuses it), else G's output."""
    if x_fake is None:
        with torch.no_grad(), autocast(config, device):
            x_fake = state.raw_generator(batch.x_real, batch.c_trg)
    grad_scale = state.d_scaler.get_scale() if state.d_scaler is not None else 1.0
    state.d_optim.zero_grad(set_to_none=True)
    with autocast(config, device):
        result = losses.discriminator_loss(
            critic_of(state, batch, config), batch.x_real, batch.label_org, x_fake.float(), batch.alpha, config.loss,
            grad_scale,
        )
    apply_gradients(result.total, state.d_optim, state.d_scaler)
    return result.terms


def update_generator(
    state: TrainState, batch: StepBatch, config: TrainConfig, device: torch.device, x_fake: Tensor | None = None,
    guide: LandmarkGuide | None = None, classifier: FrozenClassifier | None = None,
) -> dict:
    """One G update; x_fake is G(x_real, c_trg) with its graph, when the step computed it already."""
    # D is frozen and called unwrapped: its gradients are not needed and DDP would all-reduce them for nothing.
    state.raw_discriminator.requires_grad_(False)
    try:
        state.g_optim.zero_grad(set_to_none=True)
        with autocast(config, device):
            result = losses.generator_loss(
                state.generator, critic_of(state, batch, config, wrapped=False), batch.x_real, batch.c_org,
                batch.c_trg, batch.label_trg, config.loss, batch.x_pair, batch.pair_mask, x_fake, guide, classifier,
            )
        apply_gradients(result.total, state.g_optim, state.g_scaler)
    finally:
        state.raw_discriminator.requires_grad_(True)
    return result.terms


def train_step(
    state: TrainState, batch: tuple[Tensor, ...], config: TrainConfig, info: DistInfo, pairs: PairSource | None = None,
    guide: LandmarkGuide | None = None, classifier: FrozenClassifier | None = None,
) -> dict:
    """One iteration at state.step: a D update, plus a G update every n_critic-th step; returns loss terms.

    On a step with a G update, G(x, c_trg) runs once, with its graph: D trains on it detached, then G's loss
    back-propagates through it (G has not changed in between, so this equals two separate forward passes).
    """
    set_learning_rates(state, config.optim)
    step_batch = prepare_batch(batch, config, info, state.step, pairs)
    if not updates_generator(state.step, config.optim):
        return update_discriminator(state, step_batch, config, info.device)
    with autocast(config, info.device):
        x_fake = state.generator(step_batch.x_real, step_batch.c_trg)
    terms = update_discriminator(state, step_batch, config, info.device, x_fake.detach())
    return terms | update_generator(state, step_batch, config, info.device, x_fake, guide, classifier)


def advance(state: TrainState, batches_per_epoch: int) -> None:
    """Count a finished step and move the sampler position (rolling over to the next epoch)."""
    state.step += 1
    state.batches_done += 1
    if state.batches_done >= batches_per_epoch:
        state.epoch, state.batches_done = state.epoch + 1, 0


def batches(data: DataBundle, state: TrainState, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    """Endless batches, each epoch starting where the state says (part-way through after a resume)."""
    while True:
        data.sampler.set_position(state.epoch, state.batches_done * batch_size)
        yield from data.loader


# ---------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def sample_grid(generator: Generator, images: Tensor) -> Tensor:
    """(R*8, 3, S, S) in [0, 1]: per input row, the input then the 7 expressions in EXPRESSIONS order."""
    was_training = generator.training
    generator.eval()
    try:
        columns = [images]
        for index in range(len(EXPRESSIONS)):
            target = F.one_hot(torch.full((images.shape[0],), index, device=images.device), len(EXPRESSIONS))
            columns.append(generator(images, target.float()))
    finally:
        generator.train(was_training)
    grid = torch.stack(columns, dim=1).flatten(0, 1)
    return grid.float().add(1).div(2).clamp(0, 1).cpu()


def evaluate(state: TrainState, data: DataBundle, run_dir: Path, writer: Any) -> Path:
    """Write RUN_DIR/samples/step_XXXXXXXX.png (and the same grid to TensorBoard); rank 0 only."""
    from torchvision.utils import make_grid, save_image

    device = next(state.raw_generator.parameters()).device
    grid = make_grid(sample_grid(state.raw_generator, data.fixed_images.to(device)), nrow=1 + len(EXPRESSIONS))
    path = run_dir / "samples" / f"step_{state.step:08d}.png"
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"))
    writer.add_image("samples", grid, state.step)
    return path


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in RUN_DIR, oldest first."""
    folder = checkpoint_dir(run_dir)
    found = [(CHECKPOINT_NAME.match(p.name), p) for p in folder.glob("step_*.safetensors")] if folder.is_dir() else []
    return sorted((int(m.group(1)), p) for m, p in found if m)


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
    path = checkpoint_dir(run_dir) / f"step_{state.step:08d}.safetensors"
    save_tensors(path, tensors, metadata)
    info_g = WeightsInfo(image_size=config.model.image_size, step=state.step, dataset=dataset)
    save_generator(Path(run_dir) / "generator.safetensors", state.raw_generator, info_g)
    for _, old in list_checkpoints(run_dir)[: -config.logging.keep_checkpoints]:
        old.unlink(missing_ok=True)
    return path


def check_resumable(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with a config that changes what the checkpoint was trained as.

    A key the checkpoint's config lacks is an option added to the code since it was saved: it was trained with
    that option's default, which is what the comparison uses.
    """
    now = flatten(to_mapping(config))
    then = flatten(to_mapping(TrainConfig())) | flatten(saved)
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


def init_critic(state: TrainState, config: TrainConfig, path: Path) -> None:
    """Start a fresh run's critic from a training checkpoint's D; its architecture must match the config's.

    A critic without a generated class may start one with it (model.d_generated_class): its E expression logits
    are copied and the generated logit starts at zero weights. A critic without a brow critic may start one with it
    (model.d_brow_critic): the brow critic starts from its fresh initialisation.
    """
    tensors, _ = load_train_state(path, "; --init-critic needs RUN_DIR/checkpoints/step_N.safetensors")
    saved = strip_prefix(tensors, "D.")
    critic = state.raw_discriminator
    own = critic.state_dict()
    if config.model.d_brow_critic and not any(k.startswith("brows.") for k in saved):
        saved |= {k: v for k, v in own.items() if k.startswith("brows.")}
    for key in ("conv2.weight", "brows.conv2.weight"):
        head = saved.get(key)
        if head is not None and key in own and head.shape[0] == own[key].shape[0] - 1:
            saved[key] = torch.cat([head, torch.zeros_like(head[:1])])
    mismatched = sorted(k for k in own.keys() | saved.keys() if k not in saved or k not in own
                        or saved[k].shape != own[k].shape)
    if mismatched:
        raise ConfigError(f"{path}: its critic does not fit the config's model (differs at {', '.join(mismatched)})")
    critic.load_state_dict(saved, strict=True)  # copies onto the run's device


# ------------------------------------------------------------------------------------------------- loop


class StopRequest:
    """SIGTERM/SIGINT set a flag: the loop finishes its step, saves and exits. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: finishing this step, saving a checkpoint, then exiting", signal.Signals(signum).name)


@dataclass
class RunLogger:
    """Rank 0's TensorBoard writer and progress bar; on other ranks every call is a no-op."""

    writer: Any = None
    progress: Any = None
    last_time: float = field(default_factory=time.perf_counter)
    last_step: int = 0

    @classmethod
    def open(cls, run_dir: Path, info: DistInfo, start: int, end: int) -> RunLogger:
        if not info.is_main:
            return cls()
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        progress = tqdm(total=end, initial=start, desc="train", unit="step", dynamic_ncols=True)
        return cls(SummaryWriter(str(Path(run_dir) / "tb")), progress, last_step=start)

    def scalars(self, step: int, terms: dict[str, Tensor], lr: float) -> None:
        if self.writer is None:
            return
        now = time.perf_counter()
        values = {name: float(value) for name, value in terms.items()}
        values |= {"lr": lr, "s_per_step": (now - self.last_time) / max(1, step - self.last_step)}
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        shown = ("d/total", "g/total", "s_per_step")
        self.progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k in shown})
        self.last_time, self.last_step = now, step

    def tick(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.progress.close()


def due(step: int, every: int) -> bool:
    return step % every == 0


def after_step(state: TrainState, terms: dict, config: TrainConfig, ctx: RunContext) -> None:
    """Rank 0's periodic work: scalars, sample grid, checkpoint."""
    ctx.logger.tick()
    if not ctx.info.is_main:
        return
    if due(state.step, config.logging.log_every):
        ctx.logger.scalars(state.step, terms, state.g_optim.param_groups[0]["lr"])
    if due(state.step, config.logging.sample_every):
        evaluate(state, ctx.data, ctx.run_dir, ctx.logger.writer)
    if due(state.step, config.logging.checkpoint_every):
        save_checkpoint(state, config, ctx.run_dir, ctx.info, ctx.data.name)


@dataclass(frozen=True)
class RunContext:
    info: DistInfo
    data: DataBundle
    run_dir: Path
    logger: RunLogger


def run_loop(state: TrainState, config: TrainConfig, ctx: RunContext, end: int) -> None:
    """Train until step `end` or a stop signal; always leaves a checkpoint of the last finished step."""
    start = state.step
    stream = batches(ctx.data, state, config.optim.batch_size)
    with StopRequest() as stop:
        while state.step < end:
            terms = train_step(state, next(stream), config, ctx.info, ctx.data.pairs, ctx.data.guide,
                               ctx.data.classifier)
            advance(state, ctx.data.batches_per_epoch)
            after_step(state, terms, config, ctx)
            if any_process(stop.requested, ctx.info):
                break
    if ctx.info.is_main and state.step > start and not due(state.step, config.logging.checkpoint_every):
        path = save_checkpoint(state, config, ctx.run_dir, ctx.info, ctx.data.name)
        log.info("saved %s", path)
    if ctx.info.is_main and state.step > start and not due(state.step, config.logging.sample_every):
        evaluate(state, ctx.data, ctx.run_dir, ctx.logger.writer)  # so every stop leaves a grid to look at
    barrier(ctx.info)


def find_resume_checkpoint(options: RunOptions) -> Path | None:
    """The checkpoint to resume from (None = fresh start); a run dir with checkpoints needs --resume."""
    found = list_checkpoints(options.run_dir)
    if found and not options.resume:
        raise UserError(f"{options.run_dir}: already has checkpoints (latest step {found[-1][0]}); "
                        "pass --resume to continue that run, or choose another --out")
    return found[-1][1] if found else None


def write_run_config(config: TrainConfig, run_dir: Path, info: DistInfo) -> None:
    """RUN_DIR/config.yaml, the resolved config for people (checkpoints carry their own copy)."""
    if info.is_main:
        atomic_write(Path(run_dir) / "config.yaml", lambda tmp: tmp.write_text(config_yaml(config)))


@dataclass(frozen=True)
class TrainResult:
    step: int  # the last finished step
    weights: Path  # RUN_DIR/generator.safetensors
    is_main: bool  # whether this process is rank 0 (the one that reports)


def train(config: TrainConfig, options: RunOptions) -> TrainResult:
    """Train (or resume) a run in options.run_dir, until optim.total_steps, --max-steps or a stop signal."""
    info = init_distributed(use_cuda=options.use_cuda)
    try:
        resume_from = find_resume_checkpoint(options)
        data = setup_data(config, options.data_dir, info)
        state = build_state(config, info)
        if resume_from is not None:
            load_checkpoint(state, config, resume_from, info)
            log.info("resumed from %s (step %d)", resume_from, state.step)
        elif options.init_generator is not None:
            init_generator(state, config, options.init_generator)
            log.info("generator initialised from %s", options.init_generator)
        if resume_from is None and options.init_critic is not None:
            init_critic(state, config, options.init_critic)
            log.info("critic initialised from %s", options.init_critic)
        write_run_config(config, options.run_dir, info)
        end = min(config.optim.total_steps, options.max_steps or config.optim.total_steps)
        logger = RunLogger.open(options.run_dir, info, state.step, end)
        try:
            run_loop(state, config, RunContext(info, data, Path(options.run_dir), logger), end)
        finally:
            logger.close()
        return TrainResult(state.step, Path(options.run_dir) / "generator.safetensors", info.is_main)
    finally:
        shutdown_distributed(info)
