"""Training on warped input: the generator sees each crop warped towards its target expression by the geometry
model (usgan.geometry), as it does in the product, and learns the texture (teeth, mouth interior, wrinkles,
shading). The cycle goes back through the inverse warp.

With a texture model (the refiner recipe) the warped input gets the product's texture step too, and a sample whose
target is a photo of the same person (a pair) is warped to that photo's own landmarks rather than to the model's
mean shape of the expression: its input is then aligned with the photo closely enough for a full-resolution L1.

Landmarks come from DATA/landmarks.npz (build-geometry writes it), of each crop and of its mirror image, so a
flipped photo has its own landmarks; the geometry jitter's affine moves them with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from usgan.dataset import Sample, read_landmarks
from usgan.expressions import EXPRESSIONS
from usgan.geometry import ShapeModel, fit_expression, load_model, target_landmarks
from usgan.texture import TextureLayer, canonical_field, fitted_weights, load_texture
from usgan.tps import resample, sampling_grid


@dataclass(frozen=True)
class WarpSource:
    """The shape model and the landmarks (crop units) of the training samples, by dataset index."""

    model: ShapeModel
    points: Tensor    # (N, 106, 2)
    mirrored: Tensor  # (N, 106, 2), of the mirror image
    texture: TextureLayer | None = None  # the texture step (built once), with texture_model


@dataclass(frozen=True)
class WarpedBatch:
    """The generator's input (N, 3, S, S) and the grid that takes its output back to the source's geometry."""

    x_input: Tensor
    back_grid: Tensor


def load_warp_source(model_path: str | Path, data_dir: Path, samples: Sequence[Sample],
                     texture_path: str | Path = "") -> WarpSource:
    """The model and the landmarks of samples, in their order; and the texture model when texture_path is set."""
    points, mirrored = read_landmarks(data_dir).lookup(Path(data_dir), samples)
    layer = TextureLayer(load_texture(texture_path)) if texture_path else None
    return WarpSource(load_model(model_path), torch.from_numpy(points).float(), torch.from_numpy(mirrored).float(),
                      layer)


def batch_points(source: WarpSource, indices: Tensor, flip: Tensor) -> Tensor:
    """(N, 106, 2) landmarks of the batch's samples, of the mirror image where the sample was flipped."""
    return torch.where(flip.view(-1, 1, 1), source.mirrored[indices], source.points[indices])


def partner_points(source: WarpSource, partner: Tensor, flip: Tensor) -> Tensor:
    """(N, 106, 2) the landmarks of each sample's partner photo (mirrored with it), NaN where it has none."""
    points = batch_points(source, partner.clamp_min(0), flip.view(-1))
    return torch.where((partner >= 0).view(-1, 1, 1), points, torch.full_like(points, float("nan")))


def jitter_points(points: Tensor, params: Tensor) -> Tensor:
    """Landmarks moved as usgan.training.data.geometry_jitter moves the pixels (its inverse affine)."""
    angle, scale, shift = params[:, 0], 1 + params[:, 1], params[:, 2:]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # output -> input
    normalised = points * 2 - 1
    moved = torch.linalg.solve(matrix, (normalised - shift[:, None]).transpose(1, 2)).transpose(1, 2)
    return (moved + 1) / 2


def goal_points(model: ShapeModel, points: Tensor, names: list[str]) -> Tensor:
    """The landmarks of each crop showing its target (the product's edit at intensity 1)."""
    return torch.from_numpy(target_landmarks(model, points.double().numpy(), names)).float()


def warp_towards(source: WarpSource | ShapeModel, images: Tensor, points: Tensor, targets: Tensor,
                 partner_goal: Tensor | None = None, partner: Tensor | None = None) -> WarpedBatch:
    """Each crop warped from its landmarks to the target expression's (to its partner photo's own landmarks where
    partner_goal is finite), with the texture step when the source has a texture model; and the inverse grid."""
    model = source if isinstance(source, ShapeModel) else source.model
    names = [EXPRESSIONS[int(t)] for t in targets]
    goal = goal_points(model, points, names)
    if partner_goal is not None:
        goal = torch.where(torch.isfinite(partner_goal).all(2, keepdim=True), partner_goal, goal)
    size = images.shape[-1]
    warped = resample(images, sampling_grid(points, goal, size))
    texture = None if isinstance(source, ShapeModel) else source.texture
    if texture is not None:
        warped = textured(texture, model, warped, points, goal, targets)
    return WarpedBatch(warped, sampling_grid(goal, points, size))


def textured(layer: TextureLayer, model: ShapeModel, warped: Tensor, points: Tensor, goal: Tensor,
             targets: Tensor) -> Tensor:
    """The product's texture step (usgan.texture) on crops warped from points to goal, at intensity 1."""
    source, aimed = points.double().numpy(), goal.double().numpy()
    one_hot = np.eye(len(EXPRESSIONS), dtype=np.float32)[targets.numpy()]
    ratio, mouth = fitted_weights(layer.model, fit_expression(model, source), source, aimed, one_hot,
                                  np.ones(len(targets), np.float32))
    with torch.no_grad():
        return layer(warped, warped, canonical_field(layer.model, aimed), torch.from_numpy(ratio),
                     torch.from_numpy(mouth))[0]


def warp_columns(model: ShapeModel, images: Tensor, points: Tensor) -> list[Tensor]:
    """For a sample grid: the images warped towards each expression in EXPRESSIONS order (no inverse needed)."""
    size = images.shape[-1]
    return [resample(images, sampling_grid(points, goal_points(model, points, [name] * len(images)), size))
            for name in EXPRESSIONS]

