"""US-GAN training run: setup, the step loop, sample grids, checkpoints, logging and stop signals.

One code path for a CPU, one GPU, or N GPUs on M nodes under torchrun (DDP + DistributedSampler; rank 0 logs
and saves). The losses are usgan.training.losses', one iteration is usgan.training.step's, checkpoints and resume
are usgan.training.state's; this module wires them into a run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from usgan.expressions import EXPRESSIONS
from usgan.files import atomic_write, output_folder
from usgan.model import Discriminator, Generator
from usgan.training.config import RunOptions, TrainConfig, config_yaml
from usgan.training.data import DataBundle, setup_data
from usgan.training.distributed import DistInfo, any_process, barrier, init_distributed, shutdown_distributed
from usgan.training.state import (
    TrainState, find_resume_checkpoint, init_critic, init_generator, load_checkpoint, save_checkpoint,
)
from usgan.training.step import make_scaler, train_step
from usgan.training.warp import warp_columns

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ setup


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


def start_state(config: TrainConfig, options: RunOptions, resume_from: Path | None, info: DistInfo) -> TrainState:
    """The state to train from: resume_from (a checkpoint of the run), else fresh or from --init-* weights."""
    state = build_state(config, info)
    if resume_from is not None:
        load_checkpoint(state, config, resume_from, info)
        log.info("resumed from %s (step %d)", resume_from, state.step)
        return state
    if options.init_generator is not None:
        init_generator(state, config, options.init_generator)
        log.info("generator initialised from %s", options.init_generator)
    if options.init_critic is not None:
        init_critic(state, options.init_critic)
        log.info("critic initialised from %s", options.init_critic)
    return state


def write_run_config(config: TrainConfig, run_dir: Path, info: DistInfo) -> None:
    """RUN_DIR/config.yaml, the resolved config for people (checkpoints carry their own copy)."""
    if info.is_main:
        atomic_write(Path(run_dir) / "config.yaml", lambda tmp: tmp.write_text(config_yaml(config)))


# ------------------------------------------------------------------------------------------ sample grid


@torch.no_grad()
def sample_grid(generator: Generator, images: Tensor, inputs: list[Tensor] | None = None) -> Tensor:
    """(R*8, 3, S, S) in [0, 1]: per input row, the input then the 7 expressions in EXPRESSIONS order. inputs: the
    generator's input per expression (the images warped towards it), when training on warped input."""
    was_training = generator.training
    generator.eval()
    try:
        columns = [images]
        for index in range(len(EXPRESSIONS)):
            target = F.one_hot(torch.full((images.shape[0],), index, device=images.device), len(EXPRESSIONS))
            columns.append(generator(images if inputs is None else inputs[index], target.float()))
    finally:
        generator.train(was_training)
    grid = torch.stack(columns, dim=1).flatten(0, 1)
    return grid.float().add(1).div(2).clamp(0, 1).cpu()


def write_sample_grid(state: TrainState, data: DataBundle, run_dir: Path, writer: Any) -> Path:
    """Write RUN_DIR/samples/step_XXXXXXXX.png (and the same grid to TensorBoard); rank 0 only."""
    from torchvision.utils import make_grid, save_image

    device = next(state.raw_generator.parameters()).device
    inputs = None
    if data.warp is not None and data.fixed_points is not None:
        inputs = [x.to(device) for x in warp_columns(data.warp.model, data.fixed_images, data.fixed_points)]
    grid = make_grid(sample_grid(state.raw_generator, data.fixed_images.to(device), inputs),
                     nrow=1 + len(EXPRESSIONS))
    path = run_dir / "samples" / f"step_{state.step:08d}.png"
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"))
    writer.add_image("samples", grid, state.step)
    return path


# ------------------------------------------------------------------------------------------------- loop


class StopRequest:
    """SIGTERM/SIGINT set a flag: the loop finishes its step, saves and exits. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked to stop
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
        self.requested, self.signum = True, self.signum or signum
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


@dataclass(frozen=True)
class RunContext:
    info: DistInfo
    data: DataBundle
    run_dir: Path
    logger: RunLogger


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
        write_sample_grid(state, ctx.data, ctx.run_dir, ctx.logger.writer)
    if due(state.step, config.logging.checkpoint_every):
        save_checkpoint(state, config, ctx.run_dir, ctx.info, ctx.data.name)


def run_loop(state: TrainState, config: TrainConfig, ctx: RunContext, end: int) -> int | None:
    """Train until step `end` or a stop signal; always leaves a checkpoint of the last finished step. Returns the
    stop signal, if one came."""
    start = state.step
    stream = batches(ctx.data, state, config.optim.batch_size)
    with StopRequest() as stop:
        while state.step < end:
            terms = train_step(state, next(stream), config, ctx.info, ctx.data.pairs, ctx.data.warp)
            advance(state, ctx.data.batches_per_epoch)
            after_step(state, terms, config, ctx)
            if any_process(stop.requested, ctx.info):
                break
    if ctx.info.is_main and state.step > start and not due(state.step, config.logging.checkpoint_every):
        path = save_checkpoint(state, config, ctx.run_dir, ctx.info, ctx.data.name)
        log.info("saved %s", path)
    if ctx.info.is_main and state.step > start and not due(state.step, config.logging.sample_every):
        write_sample_grid(state, ctx.data, ctx.run_dir, ctx.logger.writer)  # so every stop leaves a grid to look at
    barrier(ctx.info)
    return stop.signum


@dataclass(frozen=True)
class TrainResult:
    step: int  # the last finished step
    weights: Path  # RUN_DIR/generator.safetensors
    is_main: bool  # whether this process is rank 0 (the one that reports)
    stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run early


def train(config: TrainConfig, options: RunOptions) -> TrainResult:
    """Train (or resume) a run in options.run_dir, until optim.total_steps, --max-steps or a stop signal."""
    info = init_distributed(use_cuda=options.use_cuda)
    try:
        with output_folder(options.run_dir) if info.is_main else contextlib.nullcontext():
            return train_run(config, options, info)
    finally:
        shutdown_distributed(info)


def train_run(config: TrainConfig, options: RunOptions, info: DistInfo) -> TrainResult:
    """train's work, in its run folder."""
    resume_from = find_resume_checkpoint(options.run_dir, options.resume)
    data = setup_data(config, options.data_dir, info)
    state = start_state(config, options, resume_from, info)
    write_run_config(config, options.run_dir, info)
    end = min(config.optim.total_steps, options.max_steps or config.optim.total_steps)
    logger = RunLogger.open(options.run_dir, info, state.step, end)
    try:
        signum = run_loop(state, config, RunContext(info, data, Path(options.run_dir), logger), end)
    finally:
        logger.close()
    return TrainResult(state.step, Path(options.run_dir) / "generator.safetensors", info.is_main, signum)
