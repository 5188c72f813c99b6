"""US-GAN generator (StarGAN encoder-decoder with one residual block and the ultimate skip) and discriminator.

Module layout and parameter names follow the official code so that its state_dict loads with strict keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from usgan.config import ConfigError
from usgan.expressions import EXPRESSIONS


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator architecture; the defaults are the paper's."""

    conv_dim: int = 64
    num_expressions: int = len(EXPRESSIONS)
    residual_blocks: int = 1
    # Ours, off (0) in the paper: a fixed binomial low-pass with this many taps (3: [1, 2, 1]) on the residual, in
    # training and inference alike. It removes the period-2 checkerboard that a generator trained at 64² adds and
    # that upsampling the residual to the full-resolution crop turns into blotches. It has no weights.
    residual_blur: int = 0

    def __post_init__(self) -> None:
        if self.residual_blur not in (0, 3, 5, 7):
            raise ConfigError(f"generator.residual_blur must be 0 (off), 3, 5 or 7 taps, got {self.residual_blur}")


def binomial_kernel(taps: int, channels: int) -> torch.Tensor:
    """(channels, 1, taps, taps) normalised 2-D binomial filter (row of Pascal's triangle, outer product)."""
    row = torch.tensor([math.comb(taps - 1, k) for k in range(taps)], dtype=torch.float32)
    kernel = torch.outer(row, row) / row.sum() ** 2
    return kernel.expand(channels, 1, taps, taps).contiguous()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel low-pass of (N, C, H, W) x with a binomial_kernel (C, 1, k, k); borders replicated, size kept."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel.to(x.dtype), groups=x.shape[1])


@dataclass(frozen=True)
class DiscriminatorConfig:
    """StarGAN PatchGAN discriminator with an expression head; defaults are the paper's at 128²."""

    image_size: int = 128
    conv_dim: int = 64
    num_expressions: int = len(EXPRESSIONS)
    strided_layers: int = 6


class InstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm that always normalises with the input's own statistics.

    The official test script never calls eval(), so its test-time output uses per-image statistics.
    We keep the running-stat buffers (they are in the official checkpoint) but never use them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)


def _norm(channels: int) -> InstanceNorm2d:
    return InstanceNorm2d(channels, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            _norm(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """Maps (image, target expression) to an image: out = main([x, c]) + x (the ultimate skip)."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        dim = config.conv_dim
        layers: list[nn.Module] = [
            nn.Conv2d(3 + config.num_expressions, dim, kernel_size=7, stride=1, padding=3, bias=False),
            _norm(dim),
            nn.ReLU(inplace=True),
        ]
        for _ in range(2):
            layers += [
                nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
                _norm(dim * 2),
                nn.ReLU(inplace=True),
            ]
            dim *= 2
        layers += [ResidualBlock(dim) for _ in range(config.residual_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=4, stride=2, padding=1, bias=False),
                _norm(dim // 2),
                nn.ReLU(inplace=True),
            ]
            dim //= 2
        layers += [nn.Conv2d(dim, 3, kernel_size=7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        if config.residual_blur:
            # Not persistent: state_dict keys stay the official ones.
            self.register_buffer("blur_kernel", binomial_kernel(config.residual_blur, 3), persistent=False)

    def residual(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The change the generator adds: (N, 3, H, W) in [-1, 1] for x (N, 3, H, W) and c (N, E)."""
        c_map = c[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        residual = self.main(torch.cat([x, c_map], dim=1))
        return blur(residual, self.blur_kernel) if self.config.residual_blur else residual

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [-1, 1] plus (N, E) one-hot -> (N, 3, H, W), unclamped as in the paper."""
        return self.residual(x, c) + x


class Discriminator(nn.Module):
    """Returns (patch realism scores (N, 1, h, w), expression logits (N, E))."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = config
        if config.image_size % (2**config.strided_layers):
            raise ValueError(f"image_size {config.image_size} is not divisible by 2**{config.strided_layers}")
        dim = config.conv_dim
        layers: list[nn.Module] = [nn.Conv2d(3, dim, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        for _ in range(1, config.strided_layers):
            layers += [nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            dim *= 2
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(dim, 1, kernel_size=3, stride=1, padding=1, bias=False)
        kernel = config.image_size // 2**config.strided_layers
        self.conv2 = nn.Conv2d(dim, config.num_expressions, kernel_size=kernel, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.conv1(h), self.conv2(h).flatten(1)
