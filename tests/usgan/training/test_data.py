"""usgan.training.data: the split by identity, the loader's images, the transforms and the sampler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from usgan.dataset import DataError, scan_dataset
from usgan.expressions import EXPRESSIONS
from usgan.training.config import DataConfig
from usgan.training.data import (
    FaceDataset, ResumableSampler, colour_jitter, colour_params, flip_mask, geometry_jitter, geometry_params,
    load_image, split_samples, split_table,
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("count", [1, 2])
def test_split_never_shares_an_identity(tmp_path: Path, face_folders, seed: int, count: int) -> None:
    samples = scan_dataset(face_folders(tmp_path, count=40, identities=5))
    split = split_samples(samples, DataConfig(val_identity_count=count, seed=seed))
    train_ids, val_ids = {s.identity for s in split.train}, {s.identity for s in split.val}
    assert not train_ids & val_ids
    assert len(val_ids) == count and len(split.train) + len(split.val) == 40
    assert split == split_samples(samples, DataConfig(val_identity_count=count, seed=seed))  # deterministic


def test_explicit_validation_identities(tiny_faces: Path) -> None:
    split = split_samples(scan_dataset(tiny_faces), DataConfig(val_identities=("02",)))
    assert {s.identity for s in split.val} == {"02"}
    with pytest.raises(DataError, match="not in the data: 99"):
        split_samples(scan_dataset(tiny_faces), DataConfig(val_identities=("99",)))


def test_unknown_identities_split_per_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for index in range(200):
        folder = tmp_path / EXPRESSIONS[index % 7]
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
    samples = scan_dataset(tmp_path)
    assert all(s.identity is None for s in samples)
    split = split_samples(samples, DataConfig(val_fraction=0.2))
    assert 20 <= len(split.val) <= 60
    # adding files does not move existing ones between splits
    smaller = split_samples(samples[:100], DataConfig(val_fraction=0.2))
    assert set(smaller.val) == set(split.val) & set(samples[:100])


def test_images_are_resized_rgb_in_minus_one_one(tiny_faces: Path) -> None:
    samples = scan_dataset(tiny_faces)
    image, label, index = FaceDataset(tuple(samples), image_size=16)[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.min() < -0.5 < 0.5 < image.max()
    assert label == samples[0].label and index == 0
    gray = tiny_faces / "gray.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L").save(gray)
    assert torch.equal(load_image(gray, 32), torch.ones(3, 32, 32))


def test_flip_mask_is_reproducible_and_flips_about_half() -> None:
    mask = flip_mask(400, torch.Generator().manual_seed(0))
    assert mask.shape == (400, 1, 1, 1) and mask.dtype == torch.bool
    assert torch.equal(mask, flip_mask(400, torch.Generator().manual_seed(0)))
    assert 150 < int(mask.sum()) < 250


def test_colour_jitter_is_a_per_image_affine_colour_map_and_identity_at_zero() -> None:
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5  # nothing clamps
    assert torch.allclose(colour_jitter(images, colour_params(4, 0.0, torch.Generator())), images, atol=1e-6)
    params = colour_params(4, 1.0, torch.Generator().manual_seed(2))
    assert params.shape == (4, 5, 1, 1) and params[:, :3].abs().max() <= 0.25 and params[:, 3].abs().max() <= 0.3
    gains, bright, contrast = 1 + params[:, :3], params[:, 3:4], 1 + params[:, 4:5]
    assert torch.allclose(colour_jitter(images, params), ((images + 1) * gains - 1) * contrast + bright)
    assert colour_jitter(torch.ones(4, 3, 2, 2), params).max() <= 1.0


def test_geometry_jitter_moves_content_by_its_params_and_is_identity_at_zero() -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(geometry_jitter(images, geometry_params(3, 0.0, torch.Generator())), images, atol=1e-5)
    params = geometry_params(500, 1.0, torch.Generator().manual_seed(2))
    limits = torch.tensor([math.radians(6), 0.06, 0.08, 0.08])
    assert params.shape == (500, 4) and bool((params.abs() <= limits).all())
    assert bool((params.abs() > 0.8 * limits).any(0).all())  # each range is used nearly to its end
    dot = torch.full((1, 1, 32, 32), -1.0)
    dot[..., 10:12, 20:22] = 1.0  # a bright 2x2 square centred at x = 20.5, y = 10.5

    def centre(image: Tensor) -> tuple[float, float]:
        weight = (image[0, 0] + 1).clamp(min=0)
        y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        return float((weight * x).sum() / weight.sum()), float((weight * y).sum() / weight.sum())

    # Shift by +0.125 grid units (2 pixels of 32) samples from 2 pixels right: the content moves 2 pixels left.
    x, y = centre(geometry_jitter(dot, torch.tensor([[0.0, 0.0, 0.125, 0.0]])))
    assert (x, y) == (pytest.approx(18.5, abs=0.05), pytest.approx(10.5, abs=0.05))
    # A quarter turn about the centre (15.5, 15.5) takes it from offset (5, -5) to (5, 5) or (-5, -5).
    x, y = centre(geometry_jitter(dot, torch.tensor([[math.pi / 2, 0.0, 0.0, 0.0]])))
    assert min(abs(x - 20.5) + abs(y - 20.5), abs(x - 10.5) + abs(y - 10.5)) < 0.1
    # Scale 1.1 magnifies about the centre: offset (5, -5) becomes (5.5, -5.5).
    x, y = centre(geometry_jitter(dot, torch.tensor([[0.0, 0.1, 0.0, 0.0]])))
    assert (x, y) == (pytest.approx(21.0, abs=0.1), pytest.approx(10.0, abs=0.1))


def test_resumable_sampler_continues_the_same_epoch_order() -> None:
    dataset = list(range(10))
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=3)
    sampler.set_position(epoch=2, samples_done=0)
    full = list(sampler)
    sampler.set_position(epoch=2, samples_done=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_position(epoch=3, samples_done=0)
    assert list(sampler) != full


def test_summary_counts_images_per_expression_and_split(tiny_faces: Path) -> None:
    split = split_samples(scan_dataset(tiny_faces), DataConfig(val_identities=("01",)))
    text = split_table(split)
    angry = next(line for line in text.splitlines() if line.startswith("angry"))
    assert angry.split() == ["angry", str(sum(s.expression == "angry" for s in split.train)),
                             str(sum(s.expression == "angry" for s in split.val))]
    assert f"total {len(split.train):>10} {len(split.val):>6}".split() == \
        next(line for line in text.splitlines() if line.startswith("total")).split()
