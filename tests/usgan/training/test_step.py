"""usgan.training.step: the LR schedule, the step's batch (flips, targets, pairs, jitter) and the D and G updates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import usgan.training.step as step_module
from usgan.dataset import scan_dataset
from usgan.training.config import OptimConfig
from usgan.training.data import PairSource, geometry_jitter, geometry_params, load_image, partner_table
from usgan.training.distributed import init_distributed
from usgan.training.loop import build_state
from usgan.training.step import (
    g_warmup_factor, lr_factor, prepare_batch, train_step, update_discriminator, update_generator, updates_generator,
)


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


def test_step_sharing_one_generator_forward_equals_separate_updates(tiny_faces: Path, tiny_config) -> None:
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


def test_a_step_with_all_the_shipped_terms_logs_each_of_them(tiny_config) -> None:
    config = tiny_config(pair_fraction=1.0, colour_jitter=1.0, geometry_jitter=1.0,
                         **{"loss.lambda_pair": 5.0, "loss.lambda_smooth": 10.0, "loss.lambda_chroma": 5.0})
    info = init_distributed(use_cuda=False)
    state = build_state(config, info)
    state.step = 1  # a step with a G update (n_critic 2)
    terms = train_step(state, (torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3])), config, info)
    assert {"d/gp", "d/cls", "g/adv", "g/rec", "g/smooth", "g/chroma"} <= set(terms)
    assert float(terms["g/smooth"]) > 0 and float(terms["g/chroma"]) > 0


def paired_loader_batch(tiny_faces: Path) -> tuple[tuple, tuple, PairSource]:
    """The first 8 tiny faces as a loader batch (images, labels, indices), the samples, and their pair source."""
    samples = tuple(scan_dataset(tiny_faces))
    indices = torch.arange(8)
    images = torch.stack([load_image(samples[i].path, 32) for i in indices])
    labels = torch.tensor([samples[i].label for i in indices])
    return (images, labels, indices), samples, PairSource(samples, partner_table(samples), 32)


def test_paired_targets_come_from_the_same_person_and_are_mirrored_with_their_source(
    tiny_faces: Path, tiny_config,
) -> None:
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


def test_geometry_jitter_moves_an_image_and_its_paired_target_alike(
    tiny_faces: Path, tiny_config, monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = tiny_config(pair_fraction=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    moved = tiny_config(pair_fraction=1.0, geometry_jitter=1.0, **{"loss.lambda_pair": 1.0, "optim.batch_size": 8})
    loader_batch, _, pairs = paired_loader_batch(tiny_faces)
    info = init_distributed(use_cuda=False)
    drawn = []
    record = lambda *args: drawn.append(geometry_params(*args)) or drawn[-1]  # noqa: E731
    monkeypatch.setattr(step_module, "geometry_params", record)
    a = prepare_batch(loader_batch, plain, info, 3, pairs)
    b = prepare_batch(loader_batch, moved, info, 3, pairs)
    assert len(drawn) == 1 and drawn[0].shape == (8, 4) and bool((drawn[0] != 0).all())
    # Drawn after everything else: same flips, targets and partners as without it.
    assert torch.equal(a.label_trg, b.label_trg) and torch.equal(a.alpha, b.alpha)
    assert not torch.allclose(a.x_real, b.x_real, atol=1e-2)
    assert torch.allclose(b.x_real, geometry_jitter(a.x_real, drawn[0]), atol=1e-6)
    assert torch.allclose(b.x_pair, geometry_jitter(a.x_pair, drawn[0]), atol=1e-6)


def test_colour_jitter_changes_an_image_and_its_paired_target_alike(tiny_faces: Path, tiny_config) -> None:
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
