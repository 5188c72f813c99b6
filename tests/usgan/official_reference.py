"""A reference copy of the official StarGAN/US-GAN generator code, for parity tests only (never used by the package).

Kept as in the official model.py: plain nn.InstanceNorm2d(affine=True, track_running_stats=True), `repeat_num`
residual blocks, and US-GAN's ultimate skip (`main([x, c]) + x`). The official test script never calls eval(), so
its test-time output is this module's *train-mode* output under torch.no_grad().
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class OfficialResidualBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(dim_out, affine=True, track_running_stats=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim_out, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(dim_out, affine=True, track_running_stats=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class OfficialGenerator(nn.Module):
    def __init__(self, conv_dim: int = 64, c_dim: int = 7, repeat_num: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        layers.append(nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False))
        layers.append(nn.InstanceNorm2d(conv_dim, affine=True, track_running_stats=True))
        layers.append(nn.ReLU(inplace=True))
        curr_dim = conv_dim
        for _ in range(2):
            layers.append(nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1, bias=False))
            layers.append(nn.InstanceNorm2d(curr_dim * 2, affine=True, track_running_stats=True))
            layers.append(nn.ReLU(inplace=True))
            curr_dim = curr_dim * 2
        for _ in range(repeat_num):
            layers.append(OfficialResidualBlock(dim_in=curr_dim, dim_out=curr_dim))
        for _ in range(2):
            layers.append(nn.ConvTranspose2d(curr_dim, curr_dim // 2, kernel_size=4, stride=2, padding=1, bias=False))
            layers.append(nn.InstanceNorm2d(curr_dim // 2, affine=True, track_running_stats=True))
            layers.append(nn.ReLU(inplace=True))
            curr_dim = curr_dim // 2
        layers.append(nn.Conv2d(curr_dim, 3, kernel_size=7, stride=1, padding=3, bias=False))
        layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c.view(c.size(0), c.size(1), 1, 1)
        c = c.repeat(1, 1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1)) + x  # US-GAN's ultimate skip connection


def make_official(conv_dim: int = 64, c_dim: int = 7, repeat_num: int = 1, seed: int = 0) -> OfficialGenerator:
    """A reference generator with non-trivial norm parameters and running statistics far from (0, 1).

    Running stats far from the per-image statistics make any use of them (eval-mode InstanceNorm) visible.
    """
    torch.manual_seed(seed)
    model = OfficialGenerator(conv_dim, c_dim, repeat_num)
    for module in model.modules():
        if isinstance(module, nn.InstanceNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
            module.running_mean.normal_(0.0, 2.0)
            module.running_var.uniform_(2.0, 5.0)
            module.num_batches_tracked.fill_(1000)
    return model


def official_test_output(model: OfficialGenerator, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """What the official test script computes: train mode (it never calls eval()), no gradients.

    Runs on a copy because train-mode InstanceNorm updates the running statistics it holds.
    """
    with torch.no_grad():
        return copy.deepcopy(model).train()(x, c)


def sample_inputs(batch: int = 2, size: int = 32, c_dim: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) in [-1, 1] and cycling one-hot targets."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    c = torch.eye(c_dim)[torch.arange(batch) % c_dim]
    return x, c


def canonical_to_official(c: torch.Tensor) -> torch.Tensor:
    """Our (N, 7) target vectors re-ordered into the official checkpoint's one-hot channel order."""
    from usgan.expressions import EXPRESSIONS, OFFICIAL_LABEL_ORDER

    return c[:, [EXPRESSIONS.index(name) for name in OFFICIAL_LABEL_ORDER]]
