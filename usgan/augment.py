"""Differentiable augmentation of the critic's inputs (DiffAugment; Zhao et al., NeurIPS 2020).

Every image the critic sees, real or generated, in D's update and in G's, is first shifted, cut out and/or
re-lit at random. The aim: the critic cannot memorise TFEID's 922 photos, and the generator cannot win its
expression head with a pattern that only works at one exact position, so whatever it paints has to read as the
target wherever the crop falls and with part of the face hidden. The operations are differentiable, so G's
gradients pass through. On TFEID, in the ~570 steps a CPU session allowed, a fresh critic's expression head did not
learn at all with it (configs/train/tfeid_augment.yaml; weights/MODEL_CARD.md).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from usgan.config import ConfigError

POLICIES = ("colour", "translation", "cutout")
TRANSLATION = 1 / 8  # the largest shift, as a fraction of the image side (DiffAugment's default)
CUTOUT = 1 / 2  # the side of the hidden square, as a fraction of the image side (DiffAugment's default)


def parse_policy(text: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> () (off); unknown names are a ConfigError."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"diff_augment {text!r}: expected a comma-separated subset of {', '.join(POLICIES)}")
    return names


def colour(x: Tensor, rng: torch.Generator) -> Tensor:
    """Per-image brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) of (N, 3, H, W) x in [-1, 1]."""
    n = x.shape[0]
    draw = torch.rand(n, 3, 1, 1, 1, generator=rng).to(x.device, x.dtype)
    x = x + (draw[:, 0] - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (draw[:, 1] * 2) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (draw[:, 2] + 0.5) + mean


def translation(x: Tensor, rng: torch.Generator) -> Tensor:
    """Each image shifted by a whole number of pixels, up to TRANSLATION of its side each way; zeros come in."""
    n, _, h, w = x.shape
    pad = max(1, round(min(h, w) * TRANSLATION))
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=rng)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
                        for i, (dy, dx) in enumerate(shifts.tolist())])


def cutout(x: Tensor, rng: torch.Generator) -> Tensor:
    """Each image with a square of side CUTOUT of its side set to 0 (mid-grey), centred anywhere in it."""
    n, _, h, w = x.shape
    size_h, size_w = round(h * CUTOUT), round(w * CUTOUT)
    centres = torch.rand(n, 2, generator=rng)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    top = (centres[:, 0] * h).long().view(n, 1, 1) - size_h // 2
    left = (centres[:, 1] * w).long().view(n, 1, 1) - size_w // 2
    hidden = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~hidden).unsqueeze(1).to(x.device, x.dtype)


OPERATIONS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "colour": colour, "translation": translation, "cutout": cutout,
}


def diff_augment(x: Tensor, policy: tuple[str, ...], rng: torch.Generator) -> Tensor:
    """x with the policy's operations applied in POLICIES order, each drawing per-image parameters from rng."""
    for name in POLICIES:
        if name in policy:
            x = OPERATIONS[name](x, rng)
    return x


class AugmentedCritic:
    """critic(diff_augment(x)): what the losses call as the critic when diff_augment is on.

    rng is the step's own stream, so a resumed run draws the same shifts and squares as an uninterrupted one.
    """

    def __init__(self, critic: Callable[[Tensor], tuple[Tensor, Tensor]], policy: tuple[str, ...],
                 rng: torch.Generator):
        self.critic, self.policy, self.rng = critic, policy, rng

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.critic(diff_augment(x, self.policy, self.rng))
