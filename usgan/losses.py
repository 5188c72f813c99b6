"""US-GAN training losses: WGAN-GP adversarial, expression classification and L1 cycle reconstruction
(plus our optional paired guidance and residual smoothness).

This module owns the maths only (as stylegan3's training/loss.py); optimisers, AMP scalers and DDP live in
usgan.train. All reductions are done in float32 so the losses are the same under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from usgan.config import ConfigError
from usgan.landmarks import EXPRESSIVE, LandmarkGuide
from usgan.model import binomial_kernel, blur

# (N, 3, H, W) -> (patch scores (N, 1, h, w) or (N, P), expression logits (N, E) or (N, heads, E)), as
# usgan.model.Discriminator (E + 1 logits with its generated class).
Critic = Callable[[Tensor], tuple[Tensor, Tensor]]
# (image (N, 3, H, W), one-hot (N, E)) -> image, as usgan.model.Generator.
Translator = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; the defaults are the paper's (StarGAN's)."""

    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 1.0
    # Paired guidance (ours, off in the paper's recipe): for samples whose target is the expression of another photo
    # of the same person, an L1 between the low-pass (avg-pooled by pair_pool) output and that photo. Pooling keeps
    # the coarse expression change (mouth, brows) and ignores the small misalignment between two photos.
    lambda_pair: float = 0.0
    pair_pool: int = 4
    # Residual smoothness (ours, off in the paper): L1 of the high-pass of the change G makes (fake - real minus its
    # 5-tap binomial blur). It leaves broad shape changes (a smile, lowered brows) almost free and penalises the
    # speckle and stripes with which a generator fools a small critic's expression head (residual_high_pass).
    lambda_smooth: float = 0.0
    # Residual colourfulness (ours, off in the paper): L1 of the change's deviation from grey (each channel minus
    # the mean of the three). Real expression changes are mostly shading (chroma ~1/6 of |change| between two TFEID
    # photos of one person); a generator's stray colour (pink cheeks, yellow eyes, purple bands) is not.
    lambda_chroma: float = 0.0
    # Landmark guidance (ours, off in the paper): an L1, in percent of the crop width, between the 106 landmarks
    # (usgan.landmarks, InsightFace's 2d106det) of G(x, c_trg) and those of x moved by the training people's mean
    # shape change from x's expression to the target's, over the mouth, brows and eyes. It tells G what the
    # expression looks like (mouth corners up, brows down, ...) where the critic's small expression head cannot.
    lambda_landmark: float = 0.0
    # Classifier guidance (ours, off in the paper): cross-entropy of a frozen, adversarially robust expression
    # classifier (usgan.classifier, trained beforehand on the training people only; TrainConfig.classifier) on
    # G(x, c_trg) against the target. Unlike the critic's expression head it does not train along with G, and a
    # robust classifier cannot be flipped by a faint pattern, so G has to change what a person would see.
    lambda_classifier: float = 0.0
    # "Generated" class (ours, off in the paper; needs model.d_generated_class): lambda_generated * CE(D(fake),
    # generated) in D's loss, so the critic's expression head learns to reject what G makes. G's own
    # cross-entropy then runs over all E + 1 logits: an edit must look like a real photo of its target.
    lambda_generated: float = 0.0

    def __post_init__(self) -> None:
        if self.pair_pool < 1:
            raise ConfigError(f"loss.pair_pool must be >= 1, got {self.pair_pool}")
        for name in ("lambda_gp", "lambda_cls", "lambda_rec", "lambda_pair", "lambda_smooth", "lambda_chroma",
                     "lambda_landmark", "lambda_classifier", "lambda_generated"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


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
    """Expression cross-entropy; logits (N, E), or (N, H, E) from H heads (the mean over them); labels (N,) int64."""
    if logits.ndim == 3:
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat_interleave(logits.shape[1]))
    return F.cross_entropy(logits.float(), labels)


def brow_head_loss(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """For logging: the brow critic's own cross-entropy when the critic has one (logits (N, 2, E)); no graph."""
    return {"cls_brows": classification_loss(logits[:, 1].detach(), labels)} if logits.ndim == 3 else {}


def discriminator_loss(
    critic: Critic, x_real: Tensor, label_real: Tensor, x_fake: Tensor, alpha: Tensor, config: LossConfig,
    grad_scale: float = 1.0,
) -> LossTerms:
    """D loss: -D(real) + D(fake) + lambda_cls * CE(real, its label) + lambda_gp * GP; x_fake is detached.

    With lambda_generated set, adds lambda_generated * CE(fake, generated), the generated class being the critic's
    last logit (usgan.model.DiscriminatorConfig.generated_class).
    """
    real_scores, real_logits = critic(x_real)
    fake_scores, fake_logits = critic(x_fake.detach())
    adv_real = -real_scores.float().mean()
    adv_fake = fake_scores.float().mean()
    cls = classification_loss(real_logits, label_real)
    gp = gradient_penalty(critic, interpolate(x_real, x_fake, alpha), grad_scale)
    total = adv_real + adv_fake + config.lambda_cls * cls + config.lambda_gp * gp
    terms = {"d/adv_real": adv_real, "d/adv_fake": adv_fake, "d/cls": cls, "d/gp": gp}
    terms |= {f"d/{k}": v for k, v in brow_head_loss(real_logits, label_real).items()}
    if config.lambda_generated > 0:
        terms["d/generated"] = generated_loss(fake_logits)
        total = total + config.lambda_generated * terms["d/generated"]
    terms["d/total"] = total
    return LossTerms(total, {k: v.detach() for k, v in terms.items()})


def generated_loss(logits: Tensor) -> Tensor:
    """Cross-entropy of (N, [H,] E + 1) critic logits against the generated class (the last one)."""
    generated = torch.full((logits.shape[0],), logits.shape[-1] - 1, dtype=torch.long, device=logits.device)
    return classification_loss(logits, generated)


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


def landmark_loss(guide: LandmarkGuide, x_real: Tensor, x_fake: Tensor, label_org: Tensor, label_trg: Tensor) -> Tensor:
    """Mean |landmarks(x_fake) - guide.targets(landmarks(x_real), ...)| over the expressive points, in percent of
    the crop width (1 pixel of a 64 px crop = 1.56)."""
    with torch.no_grad():
        real = guide.model(x_real).float()
    fake = guide.model(x_fake).float()
    target = guide.targets(real, label_org, label_trg)
    return 100 * (fake - target)[:, list(EXPRESSIVE)].abs().mean()


def classifier_loss(classifier: Callable[[Tensor], Tensor], x_fake: Tensor, label_trg: Tensor) -> Tensor:
    """Cross-entropy of a frozen expression classifier ((N, 3, H, W) -> (N, E) logits) on the edits vs the targets."""
    return classification_loss(classifier(x_fake), label_trg)


def generator_loss(
    generator: Translator, critic: Critic, x_real: Tensor, c_org: Tensor, c_trg: Tensor, label_trg: Tensor,
    config: LossConfig, x_pair: Tensor | None = None, pair_mask: Tensor | None = None, x_fake: Tensor | None = None,
    guide: LandmarkGuide | None = None, classifier: Callable[[Tensor], Tensor] | None = None,
) -> LossTerms:
    """G loss: -D(G(x, c_trg)) + lambda_cls * CE(fake, target) + lambda_rec * |G(G(x, c_trg), c_org) - x|_1.

    With x_pair (N, 3, H, W) and pair_mask (N,) bool, adds lambda_pair * pair_loss for the paired samples, and
    lambda_smooth * residual_high_pass(G(x, c_trg) - x) and lambda_chroma * residual_chroma(G(x, c_trg) - x) when
    those weights are set.
    With guide and lambda_landmark set, adds lambda_landmark * landmark_loss; with classifier and lambda_classifier
    set, lambda_classifier * classifier_loss. With a generated class in the critic (lambda_generated), the
    cross-entropy runs over its E + 1 logits, so it also pushes the edits away from "generated".
    x_fake, when given, is G(x_real, c_trg) already computed with its graph (the train step shares it with D's update).
    """
    if x_fake is None:
        x_fake = generator(x_real, c_trg)
    fake_scores, fake_logits = critic(x_fake)
    x_rec = generator(x_fake, c_org)
    adv = -fake_scores.float().mean()
    cls = classification_loss(fake_logits, label_trg)
    rec = (x_real.float() - x_rec.float()).abs().mean()
    total = adv + config.lambda_cls * cls + config.lambda_rec * rec
    terms = {"g/adv": adv, "g/cls": cls, "g/rec": rec}
    terms |= {f"g/{k}": v for k, v in brow_head_loss(fake_logits, label_trg).items()}
    if config.lambda_generated > 0:  # logged only: how sure the critic is that the edits are G's
        terms["g/p_generated"] = fake_logits.detach().float().softmax(-1)[..., -1].mean()
    if x_pair is not None and pair_mask is not None and config.lambda_pair > 0:
        terms["g/pair"] = pair_loss(x_fake, x_pair, pair_mask, config.pair_pool)
        total = total + config.lambda_pair * terms["g/pair"]
    if config.lambda_smooth > 0:
        terms["g/smooth"] = residual_high_pass(x_fake - x_real)
        total = total + config.lambda_smooth * terms["g/smooth"]
    if config.lambda_chroma > 0:
        terms["g/chroma"] = residual_chroma(x_fake - x_real)
        total = total + config.lambda_chroma * terms["g/chroma"]
    if guide is not None and config.lambda_landmark > 0:
        terms["g/landmark"] = landmark_loss(guide, x_real, x_fake, c_org.argmax(1), label_trg)
        total = total + config.lambda_landmark * terms["g/landmark"]
    if classifier is not None and config.lambda_classifier > 0:
        terms["g/classifier"] = classifier_loss(classifier, x_fake, label_trg)
        total = total + config.lambda_classifier * terms["g/classifier"]
    terms["g/total"] = total
    return LossTerms(total, {k: v.detach() for k, v in terms.items()})
