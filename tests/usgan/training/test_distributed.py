"""usgan.training.distributed: the torchrun environment, and a two-process gloo run with its resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from usgan.checkpoint import load_tensors
from usgan.training.distributed import DistInfo, any_process, barrier, init_distributed, read_torchrun_env
from usgan.training.state import list_checkpoints

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (0, 0, 1)),
    ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, (5, 1, 8)),
    ({"RANK": "0", "WORLD_SIZE": "1"}, (0, 0, 1)),
])
def test_read_torchrun_env(env: dict, expected: tuple) -> None:
    assert read_torchrun_env(env) == expected


def test_single_process_without_torchrun_env() -> None:
    info = init_distributed(use_cuda=False, env={})
    assert info == DistInfo(rank=0, local_rank=0, world_size=1, is_main=True, device=torch.device("cpu"))
    assert not info.distributed
    assert any_process(True, info) and not any_process(False, info)
    barrier(info)  # a no-op, must not need a process group


def torchrun_train(data: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "cli.py"), "-v", "train", "--config", str(REPO / "configs/train/smoke.yaml"),
               "--data", str(data), "--out", str(run), "--cpu", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_process_gloo_training_and_resume(tiny_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = torchrun_train(tiny_faces, run, "--max-steps", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("stopped at step 10") == 1  # only rank 0 reports
    assert "rank 1/2 joined the gloo process group" in first.stderr
    assert [step for step, _ in list_checkpoints(run)] == [10]
    assert load_tensors(run / "checkpoints" / "step_00000010.safetensors")[1]["world_size"] == 2
    assert list((run / "tb").glob("events.out.tfevents.*")) and (run / "samples" / "step_00000010.png").is_file()

    second = torchrun_train(tiny_faces, run, "--resume", "--max-steps", "14")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "(step 10)" in second.stderr
    assert [step for step, _ in list_checkpoints(run)] == [10, 14]
    tensors, metadata = load_tensors(run / "checkpoints" / "step_00000014.safetensors")
    assert metadata["step"] == 14
    before, _ = load_tensors(run / "checkpoints" / "step_00000010.safetensors")
    assert not torch.equal(before["G.main.0.weight"], tensors["G.main.0.weight"])  # it kept training
