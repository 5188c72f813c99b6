"""Running a trained generator on face crops of any size (shared by evaluation and synthesis)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from usgan.checkpoint import WeightsInfo
from usgan.expressions import EXPRESSIONS, expression_index
from usgan.tps import apply_field
from usgan.model import Generator
from usgan.texture import TextureInputs, TextureLayer


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
    intensity: float | torch.Tensor = 1.0,
    fields: torch.Tensor | None = None,
    texture: tuple[TextureLayer, TextureInputs] | None = None,
    refine: bool | None = None,
) -> torch.Tensor:
    """Edit (N, 3, H, W) RGB crops in [-1, 1] towards targets; returns (N, 3, H, W) in [-1, 1].

    The generator runs at info.image_size. For larger crops only its residual (output - input) is upsampled and
    added to the full-resolution crop, so skin and hair detail the generator never saw are kept. intensity scales
    the residual: 0 returns the crops unchanged, 1 is the full edit (the generator's change times the target's edit
    gain, see edit_gains); a (N,) tensor scales each crop. texture: the texture step after the warp and its per-face
    inputs (usgan.texture); it needs fields. refine: the crops are textured, so the weights' refine gains apply
    (default: when texture is given).
    """
    if crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops: expected (N, 3, H, W), got {tuple(crops.shape)}")
    device = next(generator.parameters()).device
    x = crops.to(device=device, dtype=torch.float32)
    c = target_vectors(targets, x.shape[0]).to(device)
    small = resize_to_generator(x, info.image_size)
    if refine is None:  # a textured crop is refined; one whose landmarks failed (no field) gets the generator alone
        refine = False if texture is None else (fields != 0).flatten(1).any(1).to(device)
    needed = bool((edit_gains(info, c, refine) != 0).any())  # a refine gain of 0: the texture alone, no generator
    if fields is None:
        base, residual = x, generator.residual(small, c) if needed else torch.zeros_like(small)
    else:  # the crops warped by (N, g, g, 2) coarse fields (usgan.tps.coarse_field), the residual for them
        base, residual = warped_residual(generator if needed else None, x, small, c,
                                         fields.to(device=device, dtype=torch.float32),
                                         None if texture is None else (texture[0], texture[1].to(device)))
    return add_residual(base, resize_residual(residual, tuple(x.shape[2:])), intensity, info, c,
                        refine=refine).to(crops.device)


def warped_residual(generator: Generator | None, crops: torch.Tensor, small: torch.Tensor, targets: torch.Tensor,
                    fields: torch.Tensor, texture: tuple[TextureLayer, TextureInputs] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The warp and the generator as one batched step (the ONNX warp graph is exactly this): the crops (N, 3, H, W)
    and the same crops at the generator's size, both warped by the coarse fields; returns the warped crops and the
    generator's residual (N, 3, h, w) for the warped small ones (warping the small crops rather than resizing the
    warped ones keeps the antialiased resize, which ONNX cannot export, out of the graph)."""
    warped, warped_small = apply_field(crops, fields), apply_field(small, fields)
    if texture is not None:  # the texture at both sizes: the generator refines the textured face
        layer, inputs = texture
        warped, warped_small = layer(warped, warped_small, *inputs)
    if generator is None:  # its gains are all 0
        return warped, torch.zeros_like(warped_small)
    dtype = next(generator.parameters()).dtype
    residual = generator.residual(warped_small.to(dtype), targets.to(dtype))
    return warped, residual.float()


def add_residual(x: torch.Tensor, residual: torch.Tensor, intensity: float | torch.Tensor, info: WeightsInfo,
                 targets: torch.Tensor, refine: bool | torch.Tensor = False) -> torch.Tensor:
    """The edit every back-end applies: x + intensity * gain * residual, clamped to [-1, 1].

    gain is each crop's edit gain for its (N, 7) target vector (edit_gains); refine: x is textured (its refine gains),
    for all crops or per crop ((N,) bool).
    """
    gain = edit_gains(info, targets.to(x.device), refine).to(x.dtype).reshape(-1, 1, 1, 1)
    return (x + intensity_scale(intensity, x) * gain * residual).clamp(-1.0, 1.0)


def edit_gains(info: WeightsInfo, targets: torch.Tensor, refine: bool | torch.Tensor = False) -> torch.Tensor:
    """(N,) edit gains for (N, 7) target vectors (EXPRESSIONS order): info.gain_of(target) for a one-hot target, the
    target-weighted mean of the expressions' gains for a mixed one, and info.edit_gain for an all-zero one; refine
    (all crops, or (N,) bool per crop): the refine gains of textured crops."""
    weights = targets.float().clamp_min(0.0)
    total = weights.sum(dim=1)
    gains = []
    for refined in (False, True):
        per_expression = torch.tensor([info.gain_of(name, refined) for name in EXPRESSIONS], device=targets.device)
        mixed = (weights * per_expression).sum(dim=1) / total.clamp_min(1e-8)
        gains.append(torch.where(total > 0, mixed, torch.full_like(total, info.edit_gain)))
    chosen = torch.as_tensor(refine, device=targets.device).expand_as(total)
    return torch.where(chosen, gains[1], gains[0])


def resize_to_generator(crops: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) crops at the generator's size x size (antialiased bilinear); unchanged when already that size."""
    if tuple(crops.shape[2:]) == (size, size):
        return crops
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resize_residual(residual: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The generator's (N, 3, h, w) residual upsampled (bilinear) to the crops' (H, W)."""
    if tuple(residual.shape[2:]) == tuple(size):
        return residual
    return F.interpolate(residual, size=size, mode="bilinear", align_corners=False)


def intensity_scale(intensity: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A float as is; a (N,) tensor as (N, 1, 1, 1) on x's device, so each crop gets its own intensity."""
    if not isinstance(intensity, torch.Tensor):
        return intensity
    if intensity.shape != (x.shape[0],):
        raise ValueError(f"intensity: expected a float or a ({x.shape[0]},) tensor, got shape {tuple(intensity.shape)}")
    return intensity.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
