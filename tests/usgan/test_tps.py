"""usgan.tps: the thin-plate-spline warp of aligned crops."""

from __future__ import annotations

import numpy as np
import torch

from usgan.geometry import POINTS
from usgan.tps import anchor_ring, apply_field, coarse_field, face_mask, sampling_grid, warp_crops


def face_points(n: int = 2) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(torch.linspace(0.3, 0.7, 10), torch.linspace(0.3, 0.8, 11), indexing="xy"), -1)
    return grid.reshape(-1, 2)[:POINTS].expand(n, -1, -1).clone()


def test_warp_without_displacement_is_the_identity():
    crops = torch.rand(2, 3, 48, 48) * 2 - 1
    points = face_points()
    assert (warp_crops(crops, points, points) - crops).abs().max() < 1e-4


def test_anchors_and_everything_outside_the_face_stay_put():
    points = face_points(1)
    moved = points + torch.tensor([0.03, -0.02])
    field = (sampling_grid(points, moved, 64) - sampling_grid(points, points, 64)) / 2  # crop units
    outside = face_mask(64) == 0
    assert outside.any() and field[0][outside].abs().max() == 0.0
    crops = torch.rand(1, 3, 64, 64)
    out = warp_crops(crops, points, moved)
    assert torch.equal(out[0][:, outside], crops[0][:, outside])
    ring = anchor_ring()
    pixel = (ring.clamp(0, 0.999) * 64).long()
    assert field[0][pixel[:, 1], pixel[:, 0]].abs().max() < 0.01


def test_warp_moves_content_with_the_landmarks():
    crops = torch.zeros(1, 1, 64, 64)
    crops[0, 0, 30:34, 30:34] = 1.0  # a dot at (0.5, 0.5)
    source = torch.tensor([[[0.5, 0.5], [0.4, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.6]]])
    target = source + torch.tensor([[[0.06, 0.0], [0, 0], [0, 0], [0, 0], [0, 0]]])
    out = warp_crops(crops, source, target)[0, 0]
    ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
    assert abs((xs.float().mean().item() + 0.5) / 64 - 0.56) < 0.02
    assert abs((ys.float().mean().item() + 0.5) / 64 - 0.5) < 0.02


# --- the warp split for batched inference -------------------------------------------------------------------------


def smooth_image(size: int, count: int = 2) -> torch.Tensor:
    """Smooth (N, 3, size, size) images in [-1, 1]: a few low-frequency waves, so small sampling differences stay
    small in value too."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    waves = [torch.sin(6 * x + 2 * k) * torch.cos(5 * y - k) for k in range(3 * count)]
    return torch.stack(waves).reshape(count, 3, size, size)


def test_coarse_field_serves_every_crop_size():
    points = face_points(2).double()
    moved = points + torch.from_numpy(np.random.default_rng(0).normal(0, 0.01, (2, POINTS, 2)))
    field = coarse_field(points, moved)
    assert field.shape == (2, 32, 32, 2) and field.dtype == torch.float32
    small, large = (apply_field(smooth_image(size), field) for size in (48, 96))
    shrunk = torch.nn.functional.interpolate(large, size=48, mode="bilinear", antialias=True, align_corners=False)
    assert (shrunk - small).abs().mean() < 0.02
    assert coarse_field(points, points).abs().max() == 0.0
    crops = smooth_image(64)
    assert (apply_field(crops, torch.zeros(2, 32, 32, 2)) - crops).abs().max() < 1e-5


def test_coarse_field_is_right_after_torch_changes_its_thread_count():
    points = face_points(3).double()
    moved = points + torch.from_numpy(np.random.default_rng(1).normal(0, 0.01, (3, POINTS, 2)))
    before, threads = coarse_field(points, moved), torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # batched torch.linalg.solve gives garbage after this (MKL); numpy's does not
        torch.set_num_threads(max(2, threads))
        torch.testing.assert_close(coarse_field(points, moved), before)
    finally:
        torch.set_num_threads(threads)


def test_applied_field_leaves_everything_outside_the_face_in_place():
    points = face_points(1).double()
    crops = torch.rand(1, 3, 64, 64)
    out = apply_field(crops, coarse_field(points, points + 0.03))
    outside = face_mask(64) == 0
    assert torch.equal(out[0][:, outside], crops[0][:, outside]) and not torch.equal(out, crops)
