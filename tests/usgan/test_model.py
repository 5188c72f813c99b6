"""The generator and discriminator: size, official key names, the ultimate skip, parity with the official code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from official_reference import make_official, official_test_output, sample_inputs
from usgan.config import ConfigError
from usgan.model import (
    Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, binomial_kernel,
)


def test_generator_parameter_count_matches_paper_configuration():
    generator = Generator(GeneratorConfig(conv_dim=64, num_expressions=7, residual_blocks=1))
    assert sum(p.numel() for p in generator.parameters()) == 2_533_440
    assert sum(p.numel() for p in generator.parameters()) == sum(p.numel() for p in make_official().parameters())


def test_discriminator_has_six_strided_convs_and_patch_and_class_outputs():
    discriminator = Discriminator(DiscriminatorConfig(image_size=128))
    strided = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 6
    patch, logits = discriminator(torch.zeros(2, 3, 128, 128))
    assert patch.shape == (2, 1, 2, 2)
    assert logits.shape == (2, 7)


def test_discriminator_rejects_size_not_divisible_by_its_strides():
    with pytest.raises(ValueError, match="not divisible"):
        Discriminator(DiscriminatorConfig(image_size=100))


@pytest.mark.parametrize("conv_dim,blocks", [(64, 1), (8, 3)])
def test_state_dict_keys_and_shapes_are_the_official_ones(conv_dim, blocks):
    ours = Generator(GeneratorConfig(conv_dim=conv_dim, residual_blocks=blocks)).state_dict()
    official = make_official(conv_dim, 7, blocks).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}
    for key in ("main.0.weight", "main.1.running_mean", "main.1.num_batches_tracked", "main.9.main.0.weight",
                "main.9.main.4.running_var", f"main.{9 + blocks}.weight"):
        assert key in ours


def test_zero_final_conv_returns_the_input_exactly():
    generator = Generator(GeneratorConfig(conv_dim=8)).eval()
    final_conv = generator.main[-2]
    assert isinstance(final_conv, nn.Conv2d) and final_conv.out_channels == 3
    nn.init.zeros_(final_conv.weight)
    x, c = sample_inputs(batch=2, size=16)
    with torch.no_grad():
        assert torch.equal(generator(x, c), x)


@pytest.mark.parametrize("conv_dim,blocks,size", [(64, 1, 32), (16, 2, 24)])
def test_eval_output_equals_official_test_time_output(conv_dim, blocks, size):
    official = make_official(conv_dim, 7, blocks)
    generator = Generator(GeneratorConfig(conv_dim=conv_dim, residual_blocks=blocks))
    generator.load_state_dict(official.state_dict(), strict=True)
    x, c = sample_inputs(batch=3, size=size)
    expected = official_test_output(official, x, c)
    with torch.no_grad():
        ours = generator.eval()(x, c)
        running_stats = official.eval()(x, c)  # what a naive eval() port of the official code would give
    assert (ours - expected).abs().max().item() <= 1e-6
    assert (running_stats - expected).abs().max().item() > 1e-2  # the reference weights make the difference visible


def test_residual_blur_removes_the_checkerboard_and_keeps_official_keys():
    plain = Generator(GeneratorConfig(conv_dim=8)).eval()
    blurred = Generator(GeneratorConfig(conv_dim=8, residual_blur=3)).eval()
    assert list(blurred.state_dict()) == list(plain.state_dict())  # the filter has no weights
    blurred.load_state_dict(plain.state_dict(), strict=True)
    x, c = sample_inputs(batch=2, size=16)
    with torch.no_grad():
        raw, smooth = plain.residual(x, c), blurred.residual(x, c)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(raw, (1, 1, 1, 1), mode="replicate"),
                                          binomial_kernel(3, 3), groups=3)
    assert torch.allclose(smooth, expected, atol=1e-6)
    # [1, 2, 1] zeroes the period-2 checkerboard and keeps a constant.
    board = (torch.arange(6)[:, None] + torch.arange(6)[None]) % 2 * 2.0 - 1
    kernel = binomial_kernel(3, 1)
    assert torch.allclose(torch.nn.functional.conv2d(board[None, None], kernel), torch.zeros(1, 1, 4, 4))
    flat = torch.nn.functional.conv2d(torch.ones(1, 1, 5, 5), binomial_kernel(5, 1))
    assert torch.allclose(flat, torch.ones(1, 1, 1, 1))


def test_residual_blur_rejects_even_taps():
    with pytest.raises(ConfigError, match="residual_blur"):
        GeneratorConfig(residual_blur=4)
