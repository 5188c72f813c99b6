"""The thin-plate-spline warp of aligned crops, from their landmarks to target landmarks (usgan.geometry gives them).

The warp is split for batched inference: coarse_field solves the spline on the CPU (numpy, float64) and samples it
on a 32 x 32 grid; apply_field upsamples that field, masks it to the face and resamples the crops with only ops that
export to ONNX, so the GPU path stays one batched call with the generator. Training and evaluate use the same two.
A fixed ring of anchors around the face and the crop's border keeps everything beyond the face in place.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray


def anchor_ring(count: int = 40) -> torch.Tensor:
    """(count + 16, 2) fixed crop-unit points around the face: an ellipse just outside the landmarks of the
    aligned crop, plus the crop's border, so the warp leaves everything beyond the face in place."""
    angle = torch.arange(count, dtype=torch.float64) * (2 * torch.pi / count)
    ellipse = torch.stack([0.5 + 0.47 * torch.cos(angle), 0.57 + 0.45 * torch.sin(angle)], 1)
    edge = torch.linspace(0, 1, 5, dtype=torch.float64)[:4]
    border = torch.cat([torch.stack([edge, torch.zeros(4)], 1), torch.stack([torch.ones(4), edge], 1),
                        torch.stack([1 - edge, torch.ones(4)], 1), torch.stack([torch.zeros(4), 1 - edge], 1)])
    return torch.cat([ellipse, border]).float()


FIELD_GRID = 32  # the coarse field's cells per side: the TPS is smooth, so 32 x 32 samples it finely enough


def coarse_field(source: torch.Tensor, target: torch.Tensor, grid: int = FIELD_GRID,
                 smooth: float = 1e-5) -> torch.Tensor:
    """(N, grid, grid, 2) float32 displacement in crop units at the grid's cell centres, before the face mask: the
    thin-plate spline through target -> source landmarks and the anchor ring, for apply_field. Solved on the CPU with numpy in float64: torch.linalg.solve
    does not export to ONNX, and batched torch solves return garbage once torch.set_num_threads has been changed."""
    return coarse_fields([source], target, grid, smooth)[0]


def coarse_fields(sources: list[torch.Tensor], target: torch.Tensor, grid: int = FIELD_GRID,
                  smooth: float = 1e-5) -> list[torch.Tensor]:
    """coarse_field from each of several sources (N, P, 2) to one target: the spline's system depends on the target
    alone, so it is built and solved once for all of them."""
    target = np.asarray(target.detach().cpu(), np.float64)
    n, points = target.shape[:2]
    ring = np.broadcast_to(anchor_ring().double().numpy(), (n, *anchor_ring().shape))
    dst = np.concatenate([target, ring], 1)
    offsets = [np.concatenate([np.asarray(s.detach().cpu(), np.float64), ring], 1) - dst for s in sources]
    count = dst.shape[1]
    affine = np.concatenate([np.ones_like(dst[..., :1]), dst], 2)
    system = np.zeros((n, count + 3, count + 3))
    system[:, :count, :count] = _tps_basis(dst, dst) + smooth * np.eye(count)
    system[:, :count, count:], system[:, count:, :count] = affine, affine.transpose(0, 2, 1)
    weights = np.linalg.solve(system, np.concatenate([np.concatenate(offsets, 2), np.zeros((n, 3, 2 * len(sources)))], 1))
    cells, fixed = _grid_basis(grid)
    landmarks = _tps_basis(cells[None].astype(np.float32), target.astype(np.float32))  # per face; float32 is faster
    field = landmarks @ weights[:, :points].astype(np.float32) + (fixed @ weights[:, points:]).astype(np.float32)
    return [torch.from_numpy(np.ascontiguousarray(field[..., 2 * k:2 * k + 2]).reshape(n, grid, grid, 2))
            for k in range(len(sources))]


@functools.lru_cache(maxsize=4)
def _grid_basis(grid: int) -> tuple[NDArray, NDArray]:
    """The grid's cell centres (grid², 2) and the part of their TPS basis that is the same for every face: the
    kernel to the anchor ring and the affine terms (grid², ring + 3)."""
    axis = (np.arange(grid) + 0.5) / grid
    cells = np.stack(np.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    ring = anchor_ring().double().numpy()
    return cells, np.concatenate([_tps_basis(cells, ring), np.ones_like(cells[:, :1]), cells], 1)


def _tps_basis(a: NDArray, b: NDArray) -> NDArray:
    """_tps_kernel in numpy, from a matrix product: (..., P, 2) x (..., Q, 2) -> (..., P, Q)."""
    d2 = (a ** 2).sum(-1)[..., :, None] + (b ** 2).sum(-1)[..., None, :] - 2 * a @ np.swapaxes(b, -1, -2)
    d2 = np.maximum(d2, 0.0)
    return 0.5 * d2 * np.log(np.maximum(d2, 1e-30))


def field_grid(coarse: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """grid_sample coordinates (N, S, S, 2) in [-1, 1] for crops like `like` (N, C, S, S): the coarse field
    upsampled to S and masked to the face. S is read from like, so one ONNX graph serves every crop size."""
    ones = torch.ones_like(like[0, 0, 0])                       # (S,), built from the input: S stays dynamic
    axis = (ones.cumsum(0) - 0.5) / ones.sum()                  # pixel centres in crop units
    y, x = axis[:, None] * ones[None], ones[:, None] * axis[None]
    radius = (((x - 0.5) / 0.47) ** 2 + ((y - 0.57) / 0.45) ** 2).sqrt()
    mask = ((1.0 - radius) / 0.15).clamp(0.0, 1.0)             # face_mask, in the graph
    # grid_sample's [-1, 1] units (x 2) applied to the small coarse field and the one base grid, not per pixel of N.
    field = F.interpolate(coarse.permute(0, 3, 1, 2) * 2, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return (field * mask).permute(0, 2, 3, 1) + torch.stack([x, y], -1) * 2 - 1


def resample(crops: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """crops (N, C, S, S) read at grid_sample coordinates (bilinear, edges repeated)."""
    return F.grid_sample(crops, where.to(crops), mode="bilinear", padding_mode="border", align_corners=False)


def apply_field(crops: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) crops warped by a coarse_field (N, g, g, 2); ONNX-exportable (opset >= 16)."""
    return resample(crops, field_grid(coarse, crops))


def sampling_grid(source: torch.Tensor, target: torch.Tensor, size: int, grid: int = FIELD_GRID) -> torch.Tensor:
    """(N, size, size, 2) grid_sample coordinates that move landmarks source (N, P, 2, crop units) to target."""
    with torch.no_grad():
        return field_grid(coarse_field(source, target, grid), torch.zeros(1, 1, size, size))


def warp_crops(crops: torch.Tensor, source: torch.Tensor, target: torch.Tensor, grid: int = FIELD_GRID) -> torch.Tensor:
    """(N, C, S, S) crops warped so that their landmarks source (N, P, 2, crop units) move to target."""
    return apply_field(crops, coarse_field(source, target, grid).to(crops))


def face_mask(size: int) -> torch.Tensor:
    """(size, size) weight of the warp: 1 inside the anchor ellipse's inner 85%, falling to 0 on the ellipse."""
    axis = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    radius = (((x - 0.5) / 0.47) ** 2 + ((y - 0.57) / 0.45) ** 2).sqrt()
    return ((1.0 - radius) / 0.15).clamp(0.0, 1.0).float()
