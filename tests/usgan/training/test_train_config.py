"""usgan.training.config: the typed config, its YAML files and `--set` parsing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from usgan.config import ConfigError
from usgan.training.config import LossConfig, load_train_config, parse_set_options

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"


def test_set_options_parse_yaml_values() -> None:
    assert parse_set_options(("optim.g_lr=2e-4", "amp=fp16", "data.val_identities=[a, b]")) == {
        "optim.g_lr": 2e-4, "amp": "fp16", "data.val_identities": ["a", "b"]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(("nonsense",))


@pytest.mark.parametrize("bad", [{"amp": "fp8"}, {"optim.warmup_steps": -1}, {"optim.g_lr": "2e-4"},
                                 {"optim.decay_start": 10, "optim.total_steps": 5},
                                 {"model.image_size": 36}, {"optim.learning_rate": 1.0},
                                 {"pair_fraction": 1.5}, {"loss.lambda_landmark": 1.0}, {"diff_augment": ""}])
def test_bad_configs_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        load_train_config(CONFIGS / "smoke.yaml", bad)


def test_loss_config_rejects_negative_weights() -> None:
    with pytest.raises(ConfigError, match="lambda_gp"):
        LossConfig(lambda_gp=-1.0)


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml", "tfeid_64.yaml", "tfeid_128.yaml"])
def test_the_configs_load(name: str) -> None:
    config = load_train_config(CONFIGS / name, {})
    assert config.optim.betas == (0.5, 0.999) and config.loss.lambda_gp == 10.0


def test_shipped_recipe() -> None:
    config = load_train_config(CONFIGS / "tfeid_128.yaml", {})
    assert (config.model.image_size, config.model.d_conv_dim, config.model.d_strided_layers) == (128, 32, 6)
    assert config.model.generator.residual_blur == 3
    assert config.loss == LossConfig(lambda_pair=5.0, pair_pool=4, lambda_smooth=10.0, lambda_chroma=5.0)
    assert (config.optim.n_critic, config.optim.total_steps, config.optim.decay_start) == (2, 2000, 1000)
    assert (config.pair_fraction, config.colour_jitter, config.geometry_jitter) == (1.0, 1.0, 1.0)
    assert (config.data.val_identity_count, config.data.seed) == (3, 0)


def test_shipped_recipe_is_the_64px_recipe_at_128px() -> None:
    low, high = (load_train_config(CONFIGS / name, {}) for name in ("tfeid_64.yaml", "tfeid_128.yaml"))
    assert high.model == dataclasses.replace(low.model, image_size=128, d_strided_layers=6)
    assert high.optim == dataclasses.replace(low.optim, total_steps=2000, decay_start=1000, warmup_steps=200)
    assert dataclasses.replace(high, model=low.model, optim=low.optim) == low
