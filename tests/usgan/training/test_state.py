"""usgan.training.state: the checks a resume must pass, and starting a run's critic from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usgan.checkpoint import CheckpointError, load_tensors
from usgan.config import ConfigError, to_mapping
from usgan.training.config import RunOptions
from usgan.training.distributed import init_distributed
from usgan.training.loop import build_state, train
from usgan.training.state import RETIRED_OPTIONS, check_resumable, init_critic, list_checkpoints


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_default(tmp_path: Path, tiny_config) -> None:
    config = tiny_config()
    saved = to_mapping(config)
    del saved["geometry_jitter"]  # saved by code that had no such option: it trained without it
    check_resumable(config, saved, tmp_path / "step_1.safetensors")
    with pytest.raises(ConfigError, match=r"geometry_jitter: 0.0 -> 1.0"):
        check_resumable(tiny_config(geometry_jitter=1.0), saved, tmp_path / "step_1.safetensors")


def test_a_checkpoint_with_retired_options_resumes_only_if_they_were_off(tmp_path: Path, tiny_config) -> None:
    config = tiny_config()
    saved = to_mapping(config)
    for dotted, off in RETIRED_OPTIONS.items():  # as the trainer that still had them wrote them
        *parents, leaf = dotted.split(".")
        node = saved
        for parent in parents:
            node = node[parent]
        node[leaf] = off
    check_resumable(config, saved, tmp_path / "step_1.safetensors")
    saved["diff_augment"] = "translation"
    with pytest.raises(ConfigError, match=r"trained with diff_augment: 'translation'.*no longer has"):
        check_resumable(config, saved, tmp_path / "step_1.safetensors")


def test_init_critic_starts_from_a_checkpoints_critic(tiny_faces: Path, tmp_path: Path, tiny_config) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=2))
    checkpoint = list_checkpoints(source)[-1][1]
    saved, _ = load_tensors(checkpoint)
    state = build_state(tiny_config(seed=7), init_distributed(use_cuda=False))
    init_critic(state, checkpoint)
    for name, value in state.raw_discriminator.state_dict().items():
        assert torch.equal(value, saved[f"D.{name}"]), name
    tuned = tmp_path / "tuned"
    train(tiny_config(), RunOptions(tiny_faces, tuned, max_steps=2, init_critic=checkpoint))
    assert list_checkpoints(tuned)[-1][0] == 2


def test_init_critic_rejects_other_files_and_other_critics(tiny_faces: Path, tmp_path: Path, tiny_config) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=1))
    state = build_state(tiny_config(), init_distributed(use_cuda=False))
    with pytest.raises(CheckpointError, match="not a US-GAN training checkpoint"):
        init_critic(state, source / "generator.safetensors")
    wider = tiny_config(**{"model.d_conv_dim": 16})
    with pytest.raises(ConfigError, match="does not fit"):
        init_critic(build_state(wider, init_distributed(use_cuda=False)), list_checkpoints(source)[-1][1])
