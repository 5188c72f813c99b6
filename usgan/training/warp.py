"""Training on warped input: the generator sees each crop warped towards its target expression by the geometry
model (usgan.geometry), as it does in the product, and learns the texture (teeth, mouth interior, wrinkles,
shading). The cycle goes back through the inverse warp.

Landmarks come from DATA/landmarks.npz (build-geometry writes it), of each crop and of its mirror image, so a
flipped photo has its own landmarks; the geometry jitter's affine moves them with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from usgan.dataset import Sample, read_landmarks
from usgan.expressions import EXPRESSIONS
from usgan.geometry import ShapeModel, load_model, target_landmarks
from usgan.tps import resample, sampling_grid


@dataclass(frozen=True)
class WarpSource:
    """The shape model and the landmarks (crop units) of the training samples, by dataset index."""

    model: ShapeModel
    points: Tensor    # (N, 106, 2)
    mirrored: Tensor  # (N, 106, 2), of the mirror image


@dataclass(frozen=True)
class WarpedBatch:
    """The generator's input (N, 3, S, S) and the grid that takes its output back to the source's geometry."""

    x_input: Tensor
    back_grid: Tensor


def load_warp_source(model_path: str | Path, data_dir: Path, samples: Sequence[Sample]) -> WarpSource:
    """The model and the landmarks of samples, in their order."""
    points, mirrored = read_landmarks(data_dir).lookup(Path(data_dir), samples)
    return WarpSource(load_model(model_path), torch.from_numpy(points).float(),
                      torch.from_numpy(mirrored).float())


def batch_points(source: WarpSource, indices: Tensor, flip: Tensor) -> Tensor:
    """(N, 106, 2) landmarks of the batch's samples, of the mirror image where the sample was flipped."""
    return torch.where(flip.view(-1, 1, 1), source.mirrored[indices], source.points[indices])


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


def warp_towards(model: ShapeModel, images: Tensor, points: Tensor, targets: Tensor) -> WarpedBatch:
    """Each crop warped from its landmarks to the target expression's, and the inverse grid."""
    goal = goal_points(model, points, [EXPRESSIONS[int(t)] for t in targets])
    size = images.shape[-1]
    return WarpedBatch(resample(images, sampling_grid(points, goal, size)), sampling_grid(goal, points, size))


def warp_columns(model: ShapeModel, images: Tensor, points: Tensor) -> list[Tensor]:
    """For a sample grid: the images warped towards each expression in EXPRESSIONS order (no inverse needed)."""
    size = images.shape[-1]
    return [resample(images, sampling_grid(points, goal_points(model, points, [name] * len(images)), size))
            for name in EXPRESSIONS]

