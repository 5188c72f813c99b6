"""Fixtures shared by the trainer's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from usgan.training.config import TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "configs" / "train" / "smoke.yaml"


def make_tiny_config(**overrides) -> TrainConfig:
    """smoke.yaml (conv_dim 8, 32 px) with a schedule that decays from step 2 and a G update every 2 steps."""
    base = {"optim.total_steps": 8, "optim.decay_start": 2, "optim.n_critic": 2, "optim.batch_size": 4,
            "logging.sample_every": 100, "logging.checkpoint_every": 100}
    return load_train_config(SMOKE, base | overrides)


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """make_tiny_config: the smoke config for a few steps, with dotted-key overrides."""
    return make_tiny_config
