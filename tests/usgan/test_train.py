from __future__ import annotations

import dataclasses
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

import usgan.train as train_module
from cli import cli
from usgan.checkpoint import load_generator, load_tensors
from usgan.config import ConfigError, to_mapping
from usgan.errors import UserError
from usgan.data import (
    geometry_jitter, geometry_params, load_image, load_warped, partner_table, reference_indices,
)
from usgan.dataset import scan_dataset
from usgan.distributed import init_distributed
from usgan.train import (
    OptimConfig, PairSource, RunOptions, TrainConfig, build_state, g_warmup_factor, list_checkpoints,
    load_train_config, lr_factor, parse_set_options, prepare_batch, train, train_step, update_discriminator,
    update_generator, updates_generator,
)

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "train" / "smoke.yaml"


def tiny_config(**overrides) -> TrainConfig:
    """smoke.yaml (conv_dim 8, 32 px) with a schedule that decays from step 2 and a G update every 2 steps."""
    base = {"optim.total_steps": 8, "optim.decay_start": 2, "optim.n_critic": 2, "optim.batch_size": 4,
            "logging.sample_every": 100, "logging.checkpoint_every": 100}
    return load_train_config(SMOKE, base | overrides)


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
                                     {"pair_fraction": 1.0, "loss.lambda_pair": 1.0, "register_to_reference": True},
                                     {"loss.lambda_landmark": 2.0},
                                     {"model.d_generated_class": True, "loss.lambda_generated": 1.0,
                                      "model.d_brow_critic": True},
                                     {"diff_augment": "colour,translation,cutout"}])
def test_resume_matches_an_uninterrupted_run(tiny_faces: Path, tmp_path: Path, pairing: dict) -> None:
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


def test_run_dir_outputs_and_checkpoint_rotation(tiny_faces: Path, tmp_path: Path) -> None:
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


def test_a_training_checkpoint_loads_as_generator_weights(tiny_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(**{"logging.checkpoint_every": 2}), RunOptions(tiny_faces, run, max_steps=3))
    (_, path), = [c for c in list_checkpoints(run) if c[0] == 2]
    generator, info = load_generator(path)  # what evaluate/process --weights RUN/checkpoints/step_N.safetensors do
    assert (info.step, info.image_size, info.dataset, generator.config.conv_dim) == (2, 32, "smoke", 8)
    tensors, _ = load_tensors(path)
    for name, value in generator.state_dict().items():
        assert torch.equal(value, tensors[f"G.{name}"]), name


def test_run_dir_with_checkpoints_needs_resume_and_same_config(tiny_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(), RunOptions(tiny_faces, run, resume=True, max_steps=1))  # --resume on an empty dir starts
    with pytest.raises(UserError, match="pass --resume"):
        train(tiny_config(), RunOptions(tiny_faces, run, max_steps=2))
    with pytest.raises(ConfigError, match=r"optim.g_lr: 0.0001 -> 0.0002"):
        train(tiny_config(**{"optim.g_lr": 2e-4}), RunOptions(tiny_faces, run, resume=True, max_steps=2))
    # logging and the schedule length may change on resume
    changed = tiny_config(**{"logging.log_every": 1, "optim.total_steps": 10})
    assert train(changed, RunOptions(tiny_faces, run, resume=True, max_steps=2)).step == 2


def test_step_sharing_one_generator_forward_equals_separate_updates(tiny_faces: Path) -> None:
    config = tiny_config(**{"optim.n_critic": 1})
    info = init_distributed(use_cuda=False)
    images = torch.stack([load_image(s.path, 32) for s in scan_dataset(tiny_faces)[:4]])
    batch = (images, torch.tensor([0, 3, 5, 6]))
    shared, separate = build_state(config, info), build_state(config, info)
    train_step(shared, batch, config, info)
    step_batch = prepare_batch(batch, config, info, 0)
    update_discriminator(separate, step_batch, config, info.device)  # G runs again inside each update
    update_generator(separate, step_batch, config, info.device)
    for state in (shared, separate):
        assert state.raw_generator.main[0].weight.grad is not None
    for (name, a), b in zip(shared.raw_generator.named_parameters(), separate.raw_generator.parameters()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(shared.raw_discriminator.named_parameters(), separate.raw_discriminator.parameters()):
        assert torch.equal(a, b), name


def test_init_generator_starts_a_fresh_run_from_weights(tiny_faces: Path, tmp_path: Path) -> None:
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


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_default(tmp_path: Path) -> None:
    config = tiny_config()
    saved = to_mapping(config)
    del saved["diff_augment"]  # saved by code that had no such option: it trained without it
    train_module.check_resumable(config, saved, tmp_path / "step_1.safetensors")
    with pytest.raises(ConfigError, match=r"diff_augment: '' -> 'translation'"):
        train_module.check_resumable(tiny_config(diff_augment="translation"), saved, tmp_path / "step_1.safetensors")


def test_init_generator_must_match_the_config(tiny_faces: Path, tmp_path: Path) -> None:
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


def test_init_critic_starts_from_a_checkpoints_critic_and_grows_a_generated_class(
    tiny_faces: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=2))
    checkpoint = list_checkpoints(source)[-1][1]
    saved, _ = load_tensors(checkpoint)
    config = tiny_config(**{"model.d_generated_class": True, "loss.lambda_generated": 1.0})
    state = build_state(config, init_distributed(use_cuda=False))
    train_module.init_critic(state, config, checkpoint)
    for name, value in state.raw_discriminator.state_dict().items():
        if name == "conv2.weight":
            assert torch.equal(value[:7], saved["D.conv2.weight"])
            assert not value[7].any()  # the generated logit starts at 0
        else:
            assert torch.equal(value, saved[f"D.{name}"]), name
    # a step with a G update trains the generated class in D's loss and reports the critic's belief in G's
    state.step = 1
    batch = (torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    terms = train_step(state, batch, config, init_distributed(use_cuda=False))
    assert terms["d/generated"].item() > 0 and 0 < terms["g/p_generated"].item() < 1
    tuned = tmp_path / "tuned"
    train(config, RunOptions(tiny_faces, tuned, max_steps=2, init_critic=checkpoint))
    assert list_checkpoints(tuned)[-1][0] == 2


def test_init_critic_grows_a_fresh_brow_critic_on_a_checkpoints_critic(tiny_faces: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=1))
    checkpoint = list_checkpoints(source)[-1][1]
    saved, _ = load_tensors(checkpoint)
    config = tiny_config(**{"model.d_brow_critic": True})
    state = build_state(config, init_distributed(use_cuda=False))
    fresh = {k: v.clone() for k, v in state.raw_discriminator.state_dict().items() if k.startswith("brows.")}
    train_module.init_critic(state, config, checkpoint)
    loaded = state.raw_discriminator.state_dict()
    assert fresh and all(torch.equal(loaded[k], v) for k, v in fresh.items())
    assert all(torch.equal(loaded[k[2:]], v) for k, v in saved.items() if k.startswith("D."))
    state.step = 1
    batch = (torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    terms = train_step(state, batch, config, init_distributed(use_cuda=False))
    assert terms["d/cls_brows"].item() > 0 and terms["g/cls_brows"].item() > 0


def test_init_critic_rejects_other_files_and_other_critics(tiny_faces: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(), RunOptions(tiny_faces, source, max_steps=1))
    state = build_state(tiny_config(), init_distributed(use_cuda=False))
    with pytest.raises(train_module.CheckpointError, match="not a US-GAN training checkpoint"):
        train_module.init_critic(state, tiny_config(), source / "generator.safetensors")
    wider = tiny_config(**{"model.d_conv_dim": 16})
    with pytest.raises(ConfigError, match="does not fit"):
        train_module.init_critic(build_state(wider, init_distributed(use_cuda=False)), wider,
                                 list_checkpoints(source)[-1][1])


@pytest.mark.parametrize(("step", "factor"), [(0, 1.0), (100, 1.0), (150, 0.5), (199, 0.01), (200, 0.0)])
def test_lr_decays_linearly_over_the_second_half(step: int, factor: float) -> None:
    assert lr_factor(step, OptimConfig(total_steps=200, decay_start=100)) == pytest.approx(factor)


def test_warmup_updates_d_only_then_ramps_g_learning_rate() -> None:
    optim = OptimConfig(n_critic=2, total_steps=100, decay_start=50, warmup_steps=10)
    assert [s for s in range(16) if updates_generator(s, optim)] == [11, 13, 15]
    assert [g_warmup_factor(s, optim) for s in (0, 9, 10, 14, 19, 40)] == pytest.approx([0, 0, 0.1, 0.5, 1, 1])
    plain = OptimConfig(n_critic=2, total_steps=100, decay_start=50)
    assert [s for s in range(6) if updates_generator(s, plain)] == [1, 3, 5]
    assert g_warmup_factor(0, plain) == 1.0


def test_warmup_leaves_an_initialised_generator_untouched(tiny_faces: Path, tmp_path: Path) -> None:
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


@pytest.mark.parametrize("bad", [{"amp": "fp8"}, {"optim.warmup_steps": -1}, {"optim.g_lr": "2e-4"},
                                 {"optim.decay_start": 10, "optim.total_steps": 5},
                                 {"model.image_size": 36}, {"optim.learning_rate": 1.0},
                                 {"loss.lambda_generated": 1.0}, {"model.d_generated_class": True},
                                 {"diff_augment": "blur"}])
def test_bad_configs_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        load_train_config(SMOKE, bad)


def test_diff_augment_shows_the_critic_augmented_images_in_d_and_g_updates(tiny_faces: Path) -> None:
    info = init_distributed(use_cuda=False)
    batch = (torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    seen: list[torch.Tensor] = []
    terms = {}
    for policy in ("", "translation,cutout"):
        config = tiny_config(diff_augment=policy)
        torch.manual_seed(0)
        state = build_state(config, info)
        state.step = 1  # a step with a G update
        forward = state.raw_discriminator.forward
        state.raw_discriminator.forward = lambda x, forward=forward: seen.append(x.detach()) or forward(x)
        step_batch = prepare_batch(batch, config, info, state.step)
        assert (step_batch.augment is None) == (policy == "")
        terms[policy] = train_step(state, batch, config, info)
    plain, augmented = seen[:len(seen) // 2], seen[len(seen) // 2:]
    assert len(plain) == 4  # D: real, fake, GP points; G: fake
    assert torch.equal(plain[0], prepare_batch(batch, tiny_config(), info, 1).x_real)
    hidden = torch.cat([(x == 0).all(1).sum((1, 2)) for x in augmented])
    assert len(hidden) == 16 and int(hidden.min()) >= 64  # every image: a 16x16 square, clipped to 8x8 at worst
    assert terms["translation,cutout"]["d/total"] != terms[""]["d/total"]


def test_set_options_parse_yaml_values() -> None:
    assert parse_set_options(("optim.g_lr=2e-4", "amp=fp16", "data.val_identities=[a, b]")) == {
        "optim.g_lr": 2e-4, "amp": "fp16", "data.val_identities": ["a", "b"]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(("nonsense",))


@pytest.mark.parametrize("configs", ["default.yaml", "tfeid.yaml", "tfeid_finetune.yaml", "smoke.yaml"])
def test_shipped_configs_load(configs: str) -> None:
    config = load_train_config(REPO / "configs" / "train" / configs, {})
    assert config.optim.betas == (0.5, 0.999) and config.loss.lambda_gp == 10.0


def test_tfeid_recipe() -> None:
    config = load_train_config(REPO / "configs" / "train" / "tfeid.yaml", {})
    assert (config.model.image_size, config.optim.batch_size, config.model.d_strided_layers) == (64, 8, 5)
    assert (config.optim.total_steps, config.optim.decay_start, config.logging.checkpoint_every) == (12000, 6000, 250)
    assert (config.pair_fraction, config.loss.lambda_pair, config.data.val_identity_count) == (0.5, 2.0, 3)


def test_tfeid_refine_recipe() -> None:
    config = load_train_config(REPO / "configs" / "train" / "tfeid_refine.yaml", {})
    assert (config.model.generator.residual_blur, config.loss.lambda_smooth, config.colour_jitter) == (3, 10.0, 1.0)
    assert (config.optim.warmup_steps, config.pair_fraction, config.model.d_conv_dim) == (300, 1.0, 32)


def paired_loader_batch(tiny_faces: Path) -> tuple[tuple, tuple, PairSource]:
    """The first 8 tiny faces as a loader batch (images, labels, indices), the samples, and their pair source."""
    samples = tuple(scan_dataset(tiny_faces))
    indices = torch.arange(8)
    images = torch.stack([load_image(samples[i].path, 32) for i in indices])
    labels = torch.tensor([samples[i].label for i in indices])
    return (images, labels, indices), samples, PairSource(samples, partner_table(samples), 32)


def test_paired_targets_come_from_the_same_person_and_are_mirrored_with_their_source(tiny_faces: Path) -> None:
    config = tiny_config(pair_fraction=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    loader_batch, samples, pairs = paired_loader_batch(tiny_faces)
    images = loader_batch[0]
    info = init_distributed(use_cuda=False)
    for step in range(4):
        batch = prepare_batch(loader_batch, config, info, step, pairs)
        assert bool(batch.pair_mask.all())
        for i in range(8):
            source = samples[i]
            mirrored = not torch.equal(batch.x_real[i], images[i])
            partner = [samples[j] for j in pairs.partners[i] if
                       torch.equal(batch.x_pair[i], load_image(samples[j].path, 32).flip(2) if mirrored
                                   else load_image(samples[j].path, 32))]
            assert len(partner) == 1 and partner[0].identity == source.identity
            assert partner[0].label == int(batch.label_trg[i]) != source.label


def test_tfeid_robust_recipe_is_refine_plus_geometry_and_chroma() -> None:
    refine = load_train_config(REPO / "configs" / "train" / "tfeid_refine.yaml", {})
    robust = load_train_config(REPO / "configs" / "train" / "tfeid_robust.yaml", {})
    assert (robust.geometry_jitter, robust.loss.lambda_chroma, robust.colour_jitter) == (1.0, 5.0, 1.0)
    assert robust.model == refine.model and robust.loss == dataclasses.replace(refine.loss, lambda_chroma=5.0)


def test_tfeid_registered_recipe_is_robust_plus_registration_and_a_heavier_pair_term() -> None:
    robust = load_train_config(REPO / "configs" / "train" / "tfeid_robust.yaml", {})
    registered = load_train_config(REPO / "configs" / "train" / "tfeid_registered.yaml", {})
    assert registered.register_to_reference and not robust.register_to_reference
    assert registered.model == robust.model and registered.loss == dataclasses.replace(robust.loss, lambda_pair=10.0)
    assert (registered.colour_jitter, registered.geometry_jitter, registered.pair_fraction) == (1.0, 1.0, 1.0)


def test_tfeid_landmark_recipe_is_robust_plus_landmark_guidance() -> None:
    robust = load_train_config(REPO / "configs" / "train" / "tfeid_robust.yaml", {})
    landmark = load_train_config(REPO / "configs" / "train" / "tfeid_landmark.yaml", {})
    assert landmark.model == robust.model and landmark.loss == dataclasses.replace(robust.loss, lambda_landmark=2.0)
    assert (landmark.colour_jitter, landmark.geometry_jitter, landmark.pair_fraction) == (1.0, 1.0, 1.0)
    assert not landmark.register_to_reference


def test_landmark_guidance_builds_a_guide_from_the_training_split_and_trains_on_it(tiny_faces: Path) -> None:
    config = tiny_config(**{"loss.lambda_landmark": 2.0})
    info = init_distributed(use_cuda=False)
    data = train_module.setup_data(config, tiny_faces, info)
    assert data.guide is not None and data.guide.changes.shape == (7, 106, 2)
    assert train_module.setup_data(tiny_config(), tiny_faces, info).guide is None  # off by default
    state = train_module.build_state(config, info)
    state.step = 1  # a step with a G update (n_critic 2)
    terms = train_step(state, next(iter(data.loader)), config, info, data.pairs, data.guide)
    assert float(terms["g/landmark"]) > 0


def test_tfeid_classifier_recipe_is_robust_plus_classifier_guidance() -> None:
    robust = load_train_config(REPO / "configs" / "train" / "tfeid_robust.yaml", {})
    guided = load_train_config(REPO / "configs" / "train" / "tfeid_classifier.yaml", {})
    assert guided.model == robust.model and guided.loss == dataclasses.replace(robust.loss, lambda_classifier=1.0)
    assert (guided.colour_jitter, guided.geometry_jitter, guided.pair_fraction) == (1.0, 1.0, 1.0)
    assert guided.classifier.endswith(".safetensors")
    with pytest.raises(ConfigError, match="needs classifier"):
        tiny_config(**{"loss.lambda_classifier": 1.0})


def test_classifier_guidance_loads_the_frozen_classifier_and_trains_on_it(tiny_faces: Path, tmp_path: Path) -> None:
    from usgan.classifier import ClassifierConfig, ExpressionClassifier, save_classifier

    path = tmp_path / "classifier.safetensors"
    save_classifier(path, ExpressionClassifier(width=4).eval(), ClassifierConfig(image_size=32, width=4), {})
    config = tiny_config(**{"loss.lambda_classifier": 1.0, "classifier": str(path)})
    info = init_distributed(use_cuda=False)
    data = train_module.setup_data(config, tiny_faces, info)
    assert data.classifier is not None and not any(p.requires_grad for p in data.classifier.parameters())
    assert train_module.setup_data(tiny_config(), tiny_faces, info).classifier is None  # off by default
    state = train_module.build_state(config, info)
    state.step = 1  # a step with a G update (n_critic 2)
    terms = train_step(state, next(iter(data.loader)), config, info, data.pairs, data.guide, data.classifier)
    assert float(terms["g/classifier"]) > 0
    missing = tiny_config(**{"loss.lambda_classifier": 1.0, "classifier": str(tmp_path / "none.safetensors")})
    with pytest.raises(UserError, match="none.safetensors: no such file"):
        train_module.setup_data(missing, tiny_faces, info)


def test_registered_training_images_and_paired_targets_share_one_warp_per_photo(tiny_faces: Path) -> None:
    config = tiny_config(pair_fraction=1.0, register_to_reference=True, **{"loss.lambda_pair": 1.0})
    info = init_distributed(use_cuda=False)
    data = train_module.setup_data(config, tiny_faces, info)
    dataset, pairs = data.loader.dataset, data.pairs
    assert pairs.warps is dataset.warps and dataset.warps.shape == (len(dataset), 4)
    references = set(reference_indices(dataset.samples))
    assert all(float(dataset.warps[i].abs().max()) < 1e-3 for i in references)  # a reference stays as it is
    assert float(dataset.warps.abs().max()) > 1e-3  # the random tiny faces do not match their references
    loader_batch = next(iter(data.loader))
    batch = prepare_batch(loader_batch, config, info, 1, pairs)
    for i, index in enumerate(loader_batch[2].tolist()):  # the batch's dataset indices (the sampler shuffles)
        candidates = [load_warped(dataset.samples[j].path, 32, dataset.warps[j]) for j in pairs.partners[index]]
        pair = batch.x_pair[i]
        assert any(torch.equal(pair, c) or torch.equal(pair, c.flip(2)) for c in candidates)


def test_geometry_jitter_moves_an_image_and_its_paired_target_alike(
    tiny_faces: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = tiny_config(pair_fraction=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    moved = tiny_config(pair_fraction=1.0, geometry_jitter=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    loader_batch, _, pairs = paired_loader_batch(tiny_faces)
    info = init_distributed(use_cuda=False)
    drawn = []
    record = lambda *args: drawn.append(geometry_params(*args)) or drawn[-1]  # noqa: E731
    monkeypatch.setattr(train_module, "geometry_params", record)
    a = prepare_batch(loader_batch, plain, info, 3, pairs)
    b = prepare_batch(loader_batch, moved, info, 3, pairs)
    assert len(drawn) == 1 and drawn[0].shape == (8, 4) and bool((drawn[0] != 0).all())
    # Drawn after everything else: same flips, targets and partners as without it.
    assert torch.equal(a.label_trg, b.label_trg) and torch.equal(a.alpha, b.alpha)
    assert not torch.allclose(a.x_real, b.x_real, atol=1e-2)
    assert torch.allclose(b.x_real, geometry_jitter(a.x_real, drawn[0]), atol=1e-6)
    assert torch.allclose(b.x_pair, geometry_jitter(a.x_pair, drawn[0]), atol=1e-6)


def test_colour_jitter_changes_an_image_and_its_paired_target_alike(tiny_faces: Path) -> None:
    plain = tiny_config(pair_fraction=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    jittered = tiny_config(pair_fraction=1.0, colour_jitter=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    loader_batch, _, pairs = paired_loader_batch(tiny_faces)
    info = init_distributed(use_cuda=False)
    a = prepare_batch(loader_batch, plain, info, 3, pairs)
    b = prepare_batch(loader_batch, jittered, info, 3, pairs)
    # The jitter is drawn after everything else: same flips, targets and partners as without it.
    assert torch.equal(a.label_trg, b.label_trg) and torch.equal(a.alpha, b.alpha)
    assert not torch.allclose(a.x_real, b.x_real, atol=1e-2)
    for i in range(8):  # per channel, the affine map that took x_real to its jittered self also took x_pair to its
        for ch in range(3):
            src, dst = a.x_real[i, ch].flatten(), b.x_real[i, ch].flatten()
            keep = dst.abs() < 0.999  # not clamped
            slope, offset = torch.linalg.lstsq(torch.stack([src[keep], torch.ones_like(src[keep])], 1),
                                               dst[keep, None]).solution.flatten()
            pair_src, pair_dst = a.x_pair[i, ch].flatten(), b.x_pair[i, ch].flatten()
            expected = (slope * pair_src + offset).clamp(-1, 1)
            assert torch.allclose(expected, pair_dst, atol=1e-4), (i, ch)


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


def test_cli_init_critic_from_a_generator_file_is_one_line_error(tiny_faces: Path, tmp_path: Path) -> None:
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
    assert process.returncode == 0, stderr
    last_step, last_path = list_checkpoints(run)[-1]
    assert last_step >= 10 and f"stopped at step {last_step}" in stdout
    assert load_tensors(last_path)[1]["step"] == last_step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (AMP runs on CUDA only)")
@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_cuda_amp_training_steps(tiny_faces: Path, tmp_path: Path, amp: str) -> None:
    result = train(tiny_config(amp=amp), RunOptions(tiny_faces, tmp_path / "run", max_steps=4))
    tensors, metadata = load_tensors(list_checkpoints(tmp_path / "run")[-1][1])
    assert result.step == 4 and all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("G."))
    assert (metadata["scalers"]["g"] is not None) == (amp == "fp16")
