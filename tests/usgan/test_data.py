from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from usgan.data import (
    DataConfig, FaceDataset, ResumableSampler, colour_jitter, colour_params, geometry_jitter, geometry_params,
    load_image, load_warped, random_flip, reference_indices, register_to_reference, split_samples,
    summarize_split,
)
from usgan.dataset import DataError, Sample, identity_from_filename, parse_identities, scan_dataset
from usgan.expressions import EXPRESSIONS


def test_scan_maps_codes_and_aliases_to_canonical_expressions(tiny_faces: Path) -> None:
    samples = scan_dataset(tiny_faces)
    assert len(samples) == 16
    by_folder = {s.path.parent.name: s.expression for s in samples}
    assert by_folder == {"angry": "angry", "DIS": "disgusted", "fear": "fearful", "HAS": "happy",
                         "neutral": "neutral", "sadness": "sad", "SUS": "surprised"}
    assert all(s.label == EXPRESSIONS.index(s.expression) for s in samples)


def test_unknown_folder_name_is_a_clear_error(tiny_faces: Path) -> None:
    (tiny_faces / "bored").mkdir()
    with pytest.raises(DataError, match=r"bored: folder name is not an expression"):
        scan_dataset(tiny_faces)


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_data_dirs_are_one_line_errors(tmp_path: Path, make: str) -> None:
    root = tmp_path / "data"
    if make == "empty":
        (root / "happy").mkdir(parents=True)
    if make == "file":
        root.write_text("x")
    with pytest.raises(DataError) as caught:
        scan_dataset(root)
    assert str(root) in str(caught.value) and "\n" not in str(caught.value)


def test_corrupt_image_names_the_file(tiny_faces: Path) -> None:
    broken = tiny_faces / "angry" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        scan_dataset(tiny_faces)


@pytest.mark.parametrize(("name", "identity"), [("0111b01.jpg", "01"), ("3023g12.png", "30"), ("face_001.png", None),
                                                 ("0111z01.png", None)])
def test_identity_from_tfeid_filenames(name: str, identity: str | None) -> None:
    assert identity_from_filename(Path(name)) == identity


def test_index_csv_identities_take_precedence(tiny_faces: Path) -> None:
    first = sorted((tiny_faces / "angry").iterdir())[0]
    (tiny_faces / "index.csv").write_text(f"path,identity,expression,source\nangry/{first.name},alice,angry,x.jpg\n")
    identities = {s.path.name: s.identity for s in scan_dataset(tiny_faces)}
    assert identities[first.name] == "alice"
    assert sum(i == "alice" for i in identities.values()) == 1


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


def test_random_flip_is_reproducible_and_mirrors() -> None:
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4).repeat(8, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_flip(images, torch.Generator().manual_seed(0)))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


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


def test_reference_is_the_persons_first_neutral_photo_else_their_first() -> None:
    people = [("a", "happy"), ("b", "sad"), ("a", "neutral"), ("a", "neutral"), ("b", "angry"), (None, "happy")]
    samples = tuple(Sample(Path(f"/{i}.png"), expression, identity) for i, (identity, expression) in enumerate(people))
    assert reference_indices(samples) == (2, 1, 2, 2, 1, 5)


def smooth_faces(count: int, size: int = 32) -> Tensor:
    """Random smooth images (a blurred 8x8 noise upsampled): content that a small warp changes everywhere."""
    noise = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return F.interpolate(noise, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_registration_undoes_a_known_warp_and_leaves_an_aligned_image_alone() -> None:
    references = smooth_faces(4)
    applied = torch.tensor([[0.05, 0.04, 0.06, -0.05], [-0.06, -0.03, -0.04, 0.03], [0.0, 0.0, 0.08, 0.0],
                            [0.0, 0.0, 0.0, 0.0]])
    moved = geometry_jitter(references, applied)
    warps = register_to_reference(moved, references, iterations=300)
    assert warps.shape == (4, 4) and not warps.requires_grad
    error = lambda a: (a - references)[..., 4:-4, 4:-4].abs().mean(dim=(1, 2, 3))  # noqa: E731 (inside the borders)
    before, after = error(moved), error(geometry_jitter(moved, warps))
    assert bool((after[:3] < 0.25 * before[:3]).all()), (before, after)
    assert float(warps[3].abs().max()) < 1e-3  # already aligned: the identity warp
    # The fitted warp is roughly the inverse of the applied one (signs flip; to first order).
    assert torch.allclose(warps[:3], -applied[:3], atol=0.02), warps


def test_dataset_and_load_warped_apply_a_per_image_warp(tiny_faces: Path) -> None:
    samples = tuple(scan_dataset(tiny_faces))
    warps = torch.zeros(len(samples), 4)
    warps[1] = torch.tensor([0.0, 0.0, 0.25, 0.0])
    dataset = FaceDataset(samples, 32, warps)
    assert torch.allclose(dataset[0][0], load_image(samples[0].path, 32), atol=1e-5)
    expected = geometry_jitter(load_image(samples[1].path, 32)[None], warps[1:2])[0]
    assert torch.allclose(dataset[1][0], expected) and torch.equal(load_warped(samples[1].path, 32, warps[1]), expected)
    assert not torch.allclose(dataset[1][0], load_image(samples[1].path, 32), atol=1e-2)
    with pytest.raises(ValueError, match="warps have shape"):
        FaceDataset(samples, 32, warps[:3])


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
    text = summarize_split(split)
    angry = next(line for line in text.splitlines() if line.startswith("angry"))
    assert angry.split() == ["angry", str(sum(s.expression == "angry" for s in split.train)),
                             str(sum(s.expression == "angry" for s in split.val))]
    assert f"total {len(split.train):>10} {len(split.val):>6}".split() == \
        next(line for line in text.splitlines() if line.startswith("total")).split()


def test_identity_lists_are_comma_separated_with_blanks_dropped() -> None:
    assert parse_identities("16, 17,30") == ("16", "17", "30")
    assert parse_identities(" 05 ,, ") == ("05",)
    assert parse_identities("") == ()
