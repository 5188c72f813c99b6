"""usgan.training.losses: the maths of the WGAN-GP, classification, cycle, pair, smoothness and colour terms."""

from __future__ import annotations

import math

import pytest
import torch

from usgan.config import ConfigError
from usgan.training import losses
from usgan.training.config import LossConfig


def linear_critic(weight: torch.Tensor):
    """D(x) = sum(weight * x) per sample: its input gradient is `weight`, so the GP is (|weight| - 1)^2."""
    def critic(x: torch.Tensor):
        scores = (x * weight).flatten(1).sum(1)[:, None, None, None]
        return scores, torch.zeros(x.shape[0], 7)
    return critic


@pytest.mark.parametrize("norm", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("grad_scale", [1.0, 1024.0])
def test_gradient_penalty_of_a_linear_critic_is_known(norm: float, grad_scale: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(3, 4, 4)
    weight = weight * norm / weight.norm()
    x_hat = torch.randn(5, 3, 4, 4, requires_grad=True)
    penalty = losses.gradient_penalty(linear_critic(weight), x_hat, grad_scale)
    assert penalty.item() == pytest.approx((norm - 1) ** 2, abs=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic_weights() -> None:
    weight = torch.full((1, 2, 2), 1.0, requires_grad=True)  # |weight| = 2
    x_hat = torch.randn(3, 1, 2, 2, requires_grad=True)
    losses.gradient_penalty(linear_critic(weight), x_hat).backward()
    # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w| = 2 * 1 * 1 / 2 per element
    assert torch.allclose(weight.grad, torch.full_like(weight, 1.0))


def test_interpolate_stays_between_real_and_fake() -> None:
    real, fake = torch.ones(4, 3, 2, 2), -torch.ones(4, 3, 2, 2)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])[:, None, None, None]
    x_hat = losses.interpolate(real, fake, alpha)
    assert x_hat.requires_grad
    assert x_hat[:, 0, 0, 0].tolist() == [-1.0, -0.5, 0.0, 1.0]


def mean_critic(labels: torch.Tensor):
    """Scores = 2 * mean pixel; logits confidently predict `labels`."""
    def critic(x: torch.Tensor):
        logits = torch.nn.functional.one_hot(labels, 7).float() * 20
        return 2 * x.mean(dim=(1, 2, 3), keepdim=True), logits
    return critic


def test_discriminator_loss_rewards_high_real_and_low_fake_scores() -> None:
    labels = torch.tensor([0, 3])
    real, fake = torch.ones(2, 3, 4, 4), -torch.ones(2, 3, 4, 4)
    result = losses.discriminator_loss(mean_critic(labels), real, labels, fake, torch.rand(2, 1, 1, 1), LossConfig())
    assert result.terms["d/adv_real"].item() == pytest.approx(-2.0)
    assert result.terms["d/adv_fake"].item() == pytest.approx(-2.0)
    assert result.terms["d/cls"].item() < 1e-6  # the head predicts the real labels
    # the critic's input gradient is 2/48 per pixel: |grad| = 2/48 * sqrt(48)
    assert result.terms["d/gp"].item() == pytest.approx((2 / math.sqrt(48) - 1) ** 2, rel=1e-5)
    expected = -2.0 - 2.0 + 10 * result.terms["d/gp"].item()
    assert result.total.item() == pytest.approx(expected, rel=1e-5)


def test_generator_loss_terms_and_weights() -> None:
    labels = torch.tensor([1, 2])
    x_real = torch.full((2, 3, 4, 4), 0.5)
    identity = lambda x, c: x  # noqa: E731
    result = losses.generator_loss(identity, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7),
                                   labels, LossConfig(lambda_rec=5.0))
    assert result.terms["g/adv"].item() == pytest.approx(-1.0)  # the generator wants high critic scores
    assert result.terms["g/rec"].item() == 0.0
    wrong = losses.generator_loss(lambda x, c: x + 0.1, mean_critic(labels), x_real, torch.zeros(2, 7),
                                  torch.zeros(2, 7), torch.tensor([5, 6]), LossConfig(lambda_rec=5.0))
    assert wrong.terms["g/rec"].item() == pytest.approx(0.2, rel=1e-5)  # two applications of +0.1
    assert wrong.terms["g/cls"].item() > 10
    assert wrong.total.item() == pytest.approx(
        wrong.terms["g/adv"].item() + wrong.terms["g/cls"].item() + 5 * 0.2, rel=1e-5)


def test_loss_config_rejects_negative_weights() -> None:
    with pytest.raises(ConfigError, match="lambda_gp"):
        LossConfig(lambda_gp=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (AMP runs on CUDA only)")
@pytest.mark.parametrize(("dtype", "grad_scale"), [(torch.float16, 65536.0), (torch.bfloat16, 1.0)])
def test_gradient_penalty_under_autocast_matches_float32(dtype: torch.dtype, grad_scale: float) -> None:
    from usgan.model import Discriminator, DiscriminatorConfig

    torch.manual_seed(0)
    critic = Discriminator(DiscriminatorConfig(image_size=32, conv_dim=8, strided_layers=3)).cuda()
    x_hat = torch.randn(4, 3, 32, 32, device="cuda", requires_grad=True)
    reference = losses.gradient_penalty(critic, x_hat)
    with torch.autocast("cuda", dtype=dtype):
        mixed = losses.gradient_penalty(critic, x_hat, grad_scale)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=3e-2)


def test_pair_loss_only_counts_paired_samples_and_ignores_fine_misalignment() -> None:
    target = torch.rand(3, 3, 16, 16) * 2 - 1
    fake = target.clone()
    fake[1] = -target[1]  # unpaired sample: any difference there must not count
    mask = torch.tensor([True, False, True])
    assert float(losses.pair_loss(fake, target, mask, pool=4)) == 0.0
    shifted = torch.roll(target, shifts=1, dims=3)  # a one-pixel misalignment costs less after pooling
    pooled, unpooled = (float(losses.pair_loss(shifted, target, mask, pool=p)) for p in (4, 1))
    assert pooled < unpooled
    assert float(losses.pair_loss(fake, target, torch.zeros(3, dtype=torch.bool), pool=4)) == 0.0


def test_generator_loss_adds_weighted_pair_term() -> None:
    labels = torch.tensor([0, 1])
    x_real = torch.zeros(2, 3, 8, 8)
    x_pair = torch.ones(2, 3, 8, 8)
    mask = torch.tensor([True, True])
    config = LossConfig(lambda_pair=2.0, pair_pool=2)
    identity = lambda x, c: x  # noqa: E731
    with_pair = losses.generator_loss(identity, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7),
                                      labels, config, x_pair, mask)
    without = losses.generator_loss(identity, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7),
                                    labels, config)
    assert float(with_pair.terms["g/pair"]) == 1.0
    assert float(with_pair.total) == float(without.total) + 2.0


def test_residual_high_pass_penalises_texture_not_broad_changes() -> None:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    board = ((x + y) % 2 * 2 - 1).expand(1, 3, 32, 32)  # period-2 checkerboard, amplitude 1
    stripes = torch.cos(math.pi / 2 * y).expand(1, 3, 32, 32)  # period-4 horizontal stripes
    blob = torch.exp(-((x - 16) ** 2 + (y - 20) ** 2) / 50).expand(1, 3, 32, 32)  # a mouth-sized smooth change
    assert float(losses.residual_high_pass(torch.full((1, 3, 32, 32), 0.3))) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.residual_high_pass(board)) == pytest.approx(1.0, rel=0.05)
    assert float(losses.residual_high_pass(stripes)) == pytest.approx(0.75 * stripes.abs().mean().item(), rel=0.05)
    assert float(losses.residual_high_pass(blob)) < 0.1 * float(blob.abs().mean())


def test_generator_loss_adds_weighted_smoothness_of_the_residual() -> None:
    labels = torch.tensor([0, 1])
    x_real = torch.rand(2, 3, 8, 8)
    noise = torch.rand(2, 3, 8, 8) * 0.2
    textured = lambda x, c: x + noise  # noqa: E731
    config = LossConfig(lambda_smooth=3.0)
    result = losses.generator_loss(textured, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7),
                                   labels, config)
    plain = losses.generator_loss(textured, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7),
                                  labels, LossConfig())
    smooth = float(losses.residual_high_pass(noise))
    assert float(result.terms["g/smooth"]) == pytest.approx(smooth, rel=1e-4) and smooth > 0.01
    assert float(result.total) == pytest.approx(float(plain.total) + 3.0 * smooth, rel=1e-4)
    assert "g/smooth" not in plain.terms


def test_residual_chroma_counts_colour_not_shading_and_is_weighted_into_the_loss() -> None:
    shading = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 8, 8).expand(2, 3, 8, 8)
    assert float(losses.residual_chroma(shading)) == pytest.approx(0.0, abs=1e-6)
    pink = torch.tensor([0.3, -0.15, -0.15]).reshape(1, 3, 1, 1).expand(2, 3, 8, 8)  # mean 0: all colour
    assert float(losses.residual_chroma(pink)) == pytest.approx(0.2, rel=1e-5)
    assert float(losses.residual_chroma(shading + pink)) == pytest.approx(0.2, rel=1e-5)
    labels = torch.tensor([0, 1])
    x_real = torch.rand(2, 3, 8, 8)
    tinted = lambda x, c: x + pink  # noqa: E731
    args = (tinted, mean_critic(labels), x_real, torch.zeros(2, 7), torch.zeros(2, 7), labels)
    result = losses.generator_loss(*args, LossConfig(lambda_chroma=2.0))
    plain = losses.generator_loss(*args, LossConfig())
    assert float(result.terms["g/chroma"]) == pytest.approx(0.2, rel=1e-4) and "g/chroma" not in plain.terms
    assert float(result.total) == pytest.approx(float(plain.total) + 2.0 * 0.2, rel=1e-4)
