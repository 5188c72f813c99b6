"""Running a trained generator on face crops of any size (shared by evaluation and synthesis)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from usgan.checkpoint import WeightsInfo
from usgan.expressions import EXPRESSIONS, expression_index
from usgan.model import Generator


def target_vectors(targets: Sequence[str] | torch.Tensor, count: int) -> torch.Tensor:
    """(N, 7) float target vectors from expression names (any accepted spelling) or an (N, 7) tensor."""
    if isinstance(targets, torch.Tensor):
        vectors = targets.float()
    else:
        vectors = torch.zeros(len(targets), len(EXPRESSIONS))
        vectors[torch.arange(len(targets)), [expression_index(name) for name in targets]] = 1.0
    if vectors.shape != (count, len(EXPRESSIONS)):
        raise ValueError(f"targets: expected {count} expressions or a ({count}, {len(EXPRESSIONS)}) tensor, "
                         f"got shape {tuple(vectors.shape)}")
    return vectors


@torch.no_grad()
def apply_generator(
    generator: Generator,
    info: WeightsInfo,
    crops: torch.Tensor,
    targets: Sequence[str] | torch.Tensor,
    intensity: float = 1.0,
) -> torch.Tensor:
    """Edit (N, 3, H, W) RGB crops in [-1, 1] towards targets; returns (N, 3, H, W) in [-1, 1].

    The generator runs at info.image_size. For larger crops only its residual (output - input) is upsampled and
    added to the full-resolution crop, so skin and hair detail the generator never saw are kept. intensity scales
    the residual: 0 returns the crops unchanged, 1 is the generator's own edit.
    """
    if crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops: expected (N, 3, H, W), got {tuple(crops.shape)}")
    device = next(generator.parameters()).device
    x = crops.to(device=device, dtype=torch.float32)
    c = target_vectors(targets, x.shape[0]).to(device)
    size = (info.image_size, info.image_size)
    small = x if tuple(x.shape[2:]) == size else F.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                                align_corners=False)
    residual = generator.residual(small, c)
    if residual.shape[2:] != x.shape[2:]:
        residual = F.interpolate(residual, size=x.shape[2:], mode="bilinear", align_corners=False)
    return (x + intensity * residual).clamp(-1.0, 1.0).to(crops.device)
