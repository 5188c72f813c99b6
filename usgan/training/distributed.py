"""Process-group setup from torchrun's environment; a plain single process when it is absent."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; world_size 1 means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_main: bool = True
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_torchrun_env(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables; (0, 0, 1) when they are absent."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return 0, 0, 1
    return int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"])


def pick_device(local_rank: int, use_cuda: bool) -> torch.device:
    """One GPU per process (cuda:LOCAL_RANK) when CUDA is available and wanted, else the CPU."""
    if use_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(use_cuda: bool = True, env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU), or describe a single process."""
    rank, local_rank, world_size = read_torchrun_env(os.environ if env is None else env)
    device = pick_device(local_rank, use_cuda)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, is_main=rank == 0, device=device)


def barrier(info: DistInfo) -> None:
    """Wait for every process; a no-op for a single process."""
    if info.distributed:
        dist.barrier()


def any_process(flag: bool, info: DistInfo) -> bool:
    """True on every process when flag is true on at least one (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    value = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group, if this process joined one."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
