"""US-GAN training losses: WGAN-GP adversarial, expression classification and L1 cycle reconstruction
(plus our optional paired guidance, residual smoothness and residual colourfulness).

This module owns the maths only (as stylegan3's training/loss.py); optimisers, AMP scalers and DDP live in
usgan.training.step and usgan.training.loop. All reductions are done in float32 so the losses are the same under
autocast.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from usgan.tps import resample
from usgan.model import binomial_kernel, blur
from usgan.training.config import LossConfig

# (N, 3, H, W) -> (patch scores (N, 1, h, w), expression logits (N, E)), as usgan.model.Discriminator.
Critic = Callable[[Tensor], tuple[Tensor, Tensor]]
# (image (N, 3, H, W), one-hot (N, E)) -> image, as usgan.model.Generator.
Translator = Callable[[Tensor, Tensor], Tensor]


class LossTerms(NamedTuple):
    """The total to back-propagate plus detached per-term values for logging."""

    total: Tensor
    terms: dict[str, Tensor]


def interpolate(x_real: Tensor, x_fake: Tensor, alpha: Tensor) -> Tensor:
    """Random points on the lines between real and fake images; alpha is (N, 1, 1, 1) in [0, 1]."""
    x_hat = alpha * x_real.detach().float() + (1 - alpha) * x_fake.detach().float()
    return x_hat.requires_grad_(True)


def gradient_penalty(critic: Critic, x_hat: Tensor, grad_scale: float = 1.0) -> Tensor:
    """WGAN-GP term mean((||d critic(x_hat) / d x_hat||_2 - 1)^2); x_hat must require grad.

    Under fp16 autocast pass the GradScaler's scale as grad_scale: the critic output is scaled up before
    differentiating (so small gradients do not underflow in fp16) and the gradient is scaled back in float32,
    as in PyTorch's AMP gradient-penalty recipe. An overflow yields inf, which the scaler then skips.
    """
    scores, _ = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.float().sum() * grad_scale, x_hat, create_graph=True)
    grad = grad.float().flatten(1) / grad_scale
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Expression cross-entropy of (N, E) logits against (N,) int64 labels."""
    return F.cross_entropy(logits.float(), labels)


def discriminator_loss(
    critic: Critic, x_real: Tensor, label_real: Tensor, x_fake: Tensor, alpha: Tensor, config: LossConfig,
    grad_scale: float = 1.0,
) -> LossTerms:
    """D loss: -D(real) + D(fake) + lambda_cls * CE(real, its label) + lambda_gp * GP; x_fake is detached."""
    real_scores, real_logits = critic(x_real)
    fake_scores, _ = critic(x_fake.detach())
    adv_real = -real_scores.float().mean()
    adv_fake = fake_scores.float().mean()
    cls = classification_loss(real_logits, label_real)
    gp = gradient_penalty(critic, interpolate(x_real, x_fake, alpha), grad_scale)
    total = adv_real + adv_fake + config.lambda_cls * cls + config.lambda_gp * gp
    terms = {"d/adv_real": adv_real, "d/adv_fake": adv_fake, "d/cls": cls, "d/gp": gp, "d/total": total}
    return LossTerms(total, {k: v.detach() for k, v in terms.items()})


def pair_loss(x_fake: Tensor, x_pair: Tensor, pair_mask: Tensor, pool: int) -> Tensor:
    """Mean L1 between avg-pooled fakes and their same-person target photos, over the paired samples only."""
    if not bool(pair_mask.any()):
        return x_fake.new_zeros((), dtype=torch.float32)
    fake, target = x_fake[pair_mask].float(), x_pair[pair_mask].float()
    return (F.avg_pool2d(fake, pool) - F.avg_pool2d(target, pool)).abs().mean()


def residual_high_pass(residual: Tensor) -> Tensor:
    """Mean |r - binomial5(r)| of an (N, C, H, W) residual: period-2 texture counts fully, period 4 at 3/4, a
    16-pixel-wide shape at under 1/10."""
    r = residual.float()
    return (r - blur(r, binomial_kernel(5, r.shape[1]).to(r.device))).abs().mean()


def residual_chroma(residual: Tensor) -> Tensor:
    """Mean |r - mean over channels of r| of an (N, 3, H, W) residual: 0 for a grey (pure shading) change."""
    r = residual.float()
    return (r - r.mean(dim=1, keepdim=True)).abs().mean()


def generator_loss(
    generator: Translator, critic: Critic, x_real: Tensor, c_org: Tensor, c_trg: Tensor, label_trg: Tensor,
    config: LossConfig, x_pair: Tensor | None = None, pair_mask: Tensor | None = None, x_fake: Tensor | None = None,
    x_input: Tensor | None = None, back_grid: Tensor | None = None,
) -> LossTerms:
    """G loss: -D(G(x, c_trg)) + lambda_cls * CE(fake, target) + lambda_rec * |G(G(x, c_trg), c_org) - x|_1.

    With x_pair (N, 3, H, W) and pair_mask (N,) bool, adds lambda_pair * pair_loss for the paired samples, and
    lambda_smooth * residual_high_pass(G(x, c_trg) - x) and lambda_chroma * residual_chroma(G(x, c_trg) - x) when
    those weights are set.
    x_fake, when given, is G(x_real, c_trg) already computed with its graph (the train step shares it with D's update).
    On warped input, x_input is G's input (x_real warped towards the target) and back_grid the inverse warp: the
    cycle is G(back(x_fake), c_org), and the change the smoothness terms see is x_fake - x_input.
    """
    x_input = x_real if x_input is None else x_input
    if x_fake is None:
        x_fake = generator(x_input, c_trg)
    fake_scores, fake_logits = critic(x_fake)
    x_rec = generator(x_fake if back_grid is None else resample(x_fake, back_grid), c_org)
    adv = -fake_scores.float().mean()
    cls = classification_loss(fake_logits, label_trg)
    rec = (x_real.float() - x_rec.float()).abs().mean()
    total = adv + config.lambda_cls * cls + config.lambda_rec * rec
    terms = {"g/adv": adv, "g/cls": cls, "g/rec": rec}
    if x_pair is not None and pair_mask is not None and config.lambda_pair > 0:
        terms["g/pair"] = pair_loss(x_fake, x_pair, pair_mask, config.pair_pool)
        total = total + config.lambda_pair * terms["g/pair"]
    if config.lambda_smooth > 0:
        terms["g/smooth"] = residual_high_pass(x_fake - x_input)
        total = total + config.lambda_smooth * terms["g/smooth"]
    if config.lambda_chroma > 0:
        terms["g/chroma"] = residual_chroma(x_fake - x_input)
        total = total + config.lambda_chroma * terms["g/chroma"]
    terms["g/total"] = total
    return LossTerms(total, {k: v.detach() for k, v in terms.items()})
