"""usgan.training.loop: whole runs (exact resume, run folders, fine-tuning starts), the train command, signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from usgan.checkpoint import load_generator, load_tensors
from usgan.config import ConfigError
from usgan.errors import UserError
from usgan.training.config import RunOptions, load_train_config
from usgan.training.loop import train
from usgan.training.state import list_checkpoints
from usgan.training.step import lr_factor

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "configs" / "train" / "smoke.yaml"


def scramble_global_rng() -> None:
    """Stand-in for a new process: nothing from the first run's RNG state may leak into the resumed one."""
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)


@pytest.mark.parametrize("pairing", [{}, {"pair_fraction": 0.5, "loss.lambda_pair": 1.0},
                                     {"pair_fraction": 0.5, "loss.lambda_pair": 1.0, "colour_jitter": 1.0,
                                      "model.generator.residual_blur": 3},
                                     {"pair_fraction": 0.5, "loss.lambda_pair": 1.0, "geometry_jitter": 1.0,
                                      "loss.lambda_chroma": 2.0},
                                     {"pair_fraction": 1.0, "loss.lambda_pair": 5.0, "loss.lambda_smooth": 10.0,
                                      "loss.lambda_chroma": 5.0, "colour_jitter": 1.0, "geometry_jitter": 1.0,
                                      "model.generator.residual_blur": 3, "optim.warmup_steps": 2}])
def test_resume_matches_an_uninterrupted_run(tiny_config, tiny_faces: Path, tmp_path: Path, pairing: dict) -> None:
    config = tiny_config(**pairing)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(config, RunOptions(tiny_faces, straight, max_steps=6)).step == 6
    scramble_global_rng()
    assert train(config, RunOptions(tiny_faces, split, max_steps=3)).step == 3
    scramble_global_rng()
    assert train(config, RunOptions(tiny_faces, split, resume=True, max_steps=6)).step == 6

    (a, meta_a), (b, meta_b) = (load_tensors(list_checkpoints(run)[-1][1]) for run in (straight, split))
    weights = [k for k in a if k.startswith(("G.", "D."))]
    assert len(weights) == len(list(k for k in b if k.startswith(("G.", "D."))))
    for key in weights:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    for key in (k for k in a if k.startswith("optim_")):
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    # 16 images, batch 4: 4 batches per epoch, so step 6 is batch 2 of epoch 1 (the resume was mid-epoch)
    assert (meta_b["step"], meta_b["epoch"], meta_b["batches_done"]) == (6, 1, 2)
    assert meta_b["lr"]["g"] == pytest.approx(1e-4 * lr_factor(5, config.optim)) == meta_a["lr"]["g"]
    assert meta_b["lr"]["g"] < 1e-4


def test_run_dir_outputs_and_checkpoint_rotation(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    config = tiny_config(**{"logging.checkpoint_every": 1, "logging.keep_checkpoints": 2, "logging.sample_every": 2})
    run = tmp_path / "run"
    train(config, RunOptions(tiny_faces, run, max_steps=3))
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]
    assert (run / "samples" / "step_00000002.png").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert load_train_config(run / "config.yaml", {}) == config
    generator, info = load_generator(run / "generator.safetensors")
    assert (info.step, info.image_size, info.dataset) == (3, 32, "smoke")
    assert generator.config.conv_dim == 8


def test_a_training_checkpoint_loads_as_generator_weights(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(**{"logging.checkpoint_every": 2}), RunOptions(tiny_faces, run, max_steps=3))
    (_, path), = [c for c in list_checkpoints(run) if c[0] == 2]
    generator, info = load_generator(path)  # what evaluate/process --weights RUN/checkpoints/step_N.safetensors do
    assert (info.step, info.image_size, info.dataset, generator.config.conv_dim) == (2, 32, "smoke", 8)
    tensors, _ = load_tensors(path)
    for name, value in generator.state_dict().items():
        assert torch.equal(value, tensors[f"G.{name}"]), name


def test_run_dir_with_checkpoints_needs_resume_and_same_config(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(), RunOptions(tiny_faces, run, resume=True, max_steps=1))  # --resume on an empty dir starts
    with pytest.raises(UserError, match="pass --resume"):
        train(tiny_config(), RunOptions(tiny_faces, run, max_steps=2))
    with pytest.raises(ConfigError, match=r"optim.g_lr: 0.0001 -> 0.0002"):
        train(tiny_config(**{"optim.g_lr": 2e-4}), RunOptions(tiny_faces, run, resume=True, max_steps=2))
    # logging and the schedule length may change on resume
    changed = tiny_config(**{"logging.log_every": 1, "optim.total_steps": 10})
    assert train(changed, RunOptions(tiny_faces, run, resume=True, max_steps=2)).step == 2


def test_init_generator_starts_a_fresh_run_from_weights(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=2))
    start, _ = load_generator(source / "generator.safetensors")
    # one step with n_critic 2 is a D update only: the new run's G must still be the initial weights
    tuned = tmp_path / "tuned"
    train(tiny_config(seed=7),
          RunOptions(tiny_faces, tuned, max_steps=1, init_generator=source / "generator.safetensors"))
    after, _ = load_generator(tuned / "generator.safetensors")
    fresh = tmp_path / "fresh"
    train(tiny_config(seed=7), RunOptions(tiny_faces, fresh, max_steps=1))
    baseline, _ = load_generator(fresh / "generator.safetensors")
    for (name, a), b, c in zip(start.named_parameters(), after.parameters(), baseline.parameters()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(start.parameters(), baseline.parameters()))


def test_init_generator_must_match_the_config(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=1))
    wider = tiny_config(**{"model.generator.conv_dim": 16})
    with pytest.raises(ConfigError, match="differs from the config"):
        train(wider,
              RunOptions(tiny_faces, tmp_path / "wide", max_steps=1, init_generator=source / "generator.safetensors"))
    # residual_blur has no weights: a generator trained without it can be fine-tuned with it, and the result says so.
    blurred = tiny_config(**{"model.generator.residual_blur": 3})
    train(blurred,
          RunOptions(tiny_faces, tmp_path / "blur", max_steps=1, init_generator=source / "generator.safetensors"))
    tuned, _ = load_generator(tmp_path / "blur" / "generator.safetensors")
    assert tuned.config.residual_blur == 3


def test_warmup_leaves_an_initialised_generator_untouched(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=2))
    start, _ = load_generator(source / "generator.safetensors")
    tuned = tmp_path / "tuned"
    config = tiny_config(**{"optim.warmup_steps": 4})
    train(config, RunOptions(tiny_faces, tuned, max_steps=4, init_generator=source / "generator.safetensors"))
    after, _ = load_tensors(list_checkpoints(tuned)[-1][1])
    for name, value in start.named_parameters():
        assert torch.equal(after[f"G.{name}"], value), name
    assert not [k for k in after if k.startswith("optim_g.")]  # G's Adam never stepped
    assert [k for k in after if k.startswith("optim_d.")]


def test_cli_dry_run_prints_config_and_summary(tiny_faces: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--config", str(SMOKE), "--data", str(tiny_faces),
                                      "--out", str(tmp_path / "run"), "--batch-size", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "batch_size: 2" in result.output and "total" in result.output and "surprised" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_bad_data_is_one_line_error(tiny_faces: Path, tmp_path: Path) -> None:
    (tiny_faces / "whatever").mkdir()
    result = CliRunner().invoke(cli, ["train", "--config", str(SMOKE), "--data", str(tiny_faces),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and "whatever" in result.output


def test_cli_train_onto_a_full_disk_is_one_line_and_leaves_no_empty_folder(tiny_faces: Path, small_disk: Path) -> None:
    run = small_disk / "runs" / "tiny"
    result = CliRunner().invoke(cli, ["train", "--config", str(SMOKE), "--data", str(tiny_faces), "--out", str(run),
                                      "--max-steps", "2", "--set", "logging.checkpoint_every=1"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: ") and last.endswith(": no space left on the device"), result.output
    assert "Traceback" not in result.output and ".tmp" not in last
    folders = [path for path in small_disk.rglob("*") if path.is_dir()]
    assert [folder for folder in folders if not any(folder.iterdir())] == []  # no empty folder left behind
    assert not [path for path in small_disk.rglob("*.tmp")] and not (run / "checkpoints").exists()


def test_cli_init_critic_from_a_generator_file_is_one_line_error(tiny_config, tiny_faces: Path, tmp_path: Path) -> None:
    train(tiny_config(), RunOptions(tiny_faces, tmp_path / "source", max_steps=1))
    weights = tmp_path / "source" / "generator.safetensors"
    result = CliRunner().invoke(cli, ["train", "--config", str(SMOKE), "--data", str(tiny_faces),
                                      "--out", str(tmp_path / "run"), "--init-critic", str(weights)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and str(weights) in result.output
    assert not list(tmp_path.glob("run/**/*.*"))  # no config, checkpoint or log left behind


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "to_group", "signum"), [
    (0, False, signal.SIGTERM),
    (1, True, signal.SIGTERM),  # SLURM / kill -- -PGID: the loader's worker gets the signal too
    (1, True, signal.SIGINT),  # Ctrl-C in a terminal signals the whole foreground group
])
def test_stop_signal_finishes_the_step_and_saves(
    tiny_faces: Path, tmp_path: Path, workers: int, to_group: bool, signum: int,
) -> None:
    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "cli.py"), "train", "--config", str(SMOKE), "--data", str(tiny_faces),
               "--out", str(run), "--set", "optim.total_steps=100000", "--set", "optim.decay_start=0",
               "--set", f"data.workers={workers}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while not list_checkpoints(run) and time.monotonic() < deadline:  # the first checkpoint is at step 10
        time.sleep(0.2)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr  # a stopped run says so, after saving
    assert stderr.strip().splitlines()[-1].startswith(("interrupted: ", "terminated: "))
    last_step, last_path = list_checkpoints(run)[-1]
    assert last_step >= 10 and f"stopped at step {last_step}" in stdout
    assert load_tensors(last_path)[1]["step"] == last_step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (AMP runs on CUDA only)")
@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_cuda_amp_training_steps(tiny_config, tiny_faces: Path, tmp_path: Path, amp: str) -> None:
    result = train(tiny_config(amp=amp), RunOptions(tiny_faces, tmp_path / "run", max_steps=4))
    tensors, metadata = load_tensors(list_checkpoints(tmp_path / "run")[-1][1])
    assert result.step == 4 and all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("G."))
    assert (metadata["scalers"]["g"] is not None) == (amp == "fp16")


def test_cli_set_batch_size_is_honoured_and_a_bad_one_refused(tiny_faces: Path, tmp_path: Path) -> None:
    args = ["train", "--config", str(SMOKE), "--data", str(tiny_faces), "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(cli, [*args, "--set", "optim.batch_size=3"])
    assert result.exit_code == 0, result.output
    assert "batch_size: 3" in result.output
    result = CliRunner().invoke(cli, [*args, "--set", "optim.batch_size=four"])
    assert result.exit_code == 1
    assert result.output == "error: --set optim.batch_size must be a whole number, got 'four'\n"
