"""Training data: an identity-aware split of the aligned-crop set (usgan.dataset), the loader and the transforms."""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from usgan.config import ConfigError
from usgan.dataset import DataError, Sample
from usgan.expressions import EXPRESSIONS

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DataConfig:
    """Where validation images come from and how the loader runs."""

    name: str = ""  # recorded in the generator file; defaults to the data directory's name
    val_identities: tuple[str, ...] = ()  # explicit validation identities; overrides val_identity_count
    val_identity_count: int = 2  # else this many identities, chosen deterministically by seed
    val_fraction: float = 0.1  # share of images without a known identity that go to validation (per file)
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.val_identity_count < 0 or self.workers < 0:
            raise ConfigError("data.val_identity_count and data.workers must be >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class Split:
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]


def choose_val_identities(identities: list[str], config: DataConfig, where: Path) -> set[str]:
    """The configured identities, or val_identity_count of them drawn with the seed (same on every run)."""
    if config.val_identities:
        missing = sorted(set(config.val_identities) - set(identities))
        if missing:
            raise DataError(f"{where}: validation identities not in the data: {', '.join(missing)}")
        return set(config.val_identities)
    if not identities or config.val_identity_count == 0:
        return set()
    if config.val_identity_count >= len(identities):
        raise DataError(f"{where}: only {len(identities)} identities, cannot hold out {config.val_identity_count}")
    return set(random.Random(config.seed).sample(sorted(identities), config.val_identity_count))


def in_val_by_hash(sample: Sample, config: DataConfig) -> bool:
    """A per-file decision that does not depend on which other files exist (stable as data grows)."""
    key = f"{config.seed}:{sample.expression}/{sample.path.name}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") / 2**32 < config.val_fraction


def split_samples(samples: list[Sample], config: DataConfig, where: Path = Path(".")) -> Split:
    """Train/val split by identity (no identity in both); images of unknown identity are split per file."""
    known = sorted({s.identity for s in samples if s.identity is not None})
    val_ids = choose_val_identities(known, config, where)
    def is_val(sample: Sample) -> bool:
        if sample.identity is None:
            return in_val_by_hash(sample, config)
        return sample.identity in val_ids
    val = tuple(s for s in samples if is_val(s))
    return Split(train=tuple(s for s in samples if not is_val(s)), val=val)


def load_image(path: Path, image_size: int) -> Tensor:
    """(3, S, S) float32 RGB in [-1, 1]; crops are square already, so resizing keeps the face geometry."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def load_samples(samples: Sequence[Sample], image_size: int) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) images in [-1, 1] (load_image) and their (N,) int64 expression labels."""
    images = [load_image(s.path, image_size) for s in samples]
    stacked = torch.stack(images) if images else torch.zeros(0, 3, image_size, image_size)
    return stacked, torch.tensor([s.label for s in samples], dtype=torch.long)


def load_warped(path: Path, image_size: int, warp: Tensor | None) -> Tensor:
    """load_image, then (when warp, a (4,) geometry_params row, is given) that warp, e.g. a registration."""
    image = load_image(path, image_size)
    return image if warp is None else geometry_jitter(image[None], warp[None])[0]


class FaceDataset(Dataset):
    """Aligned crops with their expression labels: item i -> ((3, S, S) in [-1, 1], label index, i).

    warps, when given, is (len(samples), 4) geometry_params rows applied to each image (see register_to_reference).
    """

    def __init__(self, samples: tuple[Sample, ...], image_size: int, warps: Tensor | None = None):
        if warps is not None and warps.shape != (len(samples), 4):
            raise ValueError(f"warps have shape {tuple(warps.shape)}, expected ({len(samples)}, 4)")
        self.samples = samples
        self.image_size = image_size
        self.warps = warps

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        sample = self.samples[index]
        warp = None if self.warps is None else self.warps[index]
        return load_warped(sample.path, self.image_size, warp), sample.label, index


def reference_indices(samples: tuple[Sample, ...]) -> tuple[int, ...]:
    """For each sample, the index of its person's reference photo: their first neutral one, else their first one.

    Samples of unknown identity are their own reference (they are then left as they are by registration).
    """
    first: dict[str, int] = {}
    neutral: dict[str, int] = {}
    for index, sample in enumerate(samples):
        if sample.identity is not None:
            first.setdefault(sample.identity, index)
            if sample.expression == "neutral":
                neutral.setdefault(sample.identity, index)
    return tuple(
        index if s.identity is None else neutral.get(s.identity, first[s.identity]) for index, s in enumerate(samples)
    )


def register_to_reference(images: Tensor, references: Tensor, iterations: int = 200, lr: float = 0.01) -> Tensor:
    """(N, 4) geometry_params rows (rotation, scale - 1, x and y shift) that align each image to its reference.

    Fitted jointly by Adam on the L1 between the 2x-pooled warped image and its reference, from the identity.
    The 5-point alignment of prepare-data puts two photos of one person in slightly different frames when the mouth
    moves (an open mouth shifts the mouth-corner landmarks, and the similarity fit with them). On TFEID's 1,055 crops
    at 64 px (mean fitted warp 1.6 degrees, 2.4% scale, 2% shift), the 4x-pooled L1 to the performer's reference
    drops from 0.048 to 0.024 for their other neutral photos and by 28-36% for the expressive ones (happy 0.189 to
    0.121, sad 0.165 to 0.119): a paired target no longer differs from its source by the crop as well. What is left
    is still mostly not the expression on TFEID (exposure, hair, pose, each person's own way): scripts/pair_signal.py.
    """
    images, references = images.detach().float(), references.detach().float()
    # An image that is its own reference keeps the identity warp: its loss is left out, so Adam never moves it
    # (the sign gradient of an L1 at float rounding noise would otherwise walk it by about lr per iteration).
    moving = (images != references).flatten(1).any(dim=1).float()
    log_scale = torch.zeros(images.shape[0], 1, device=images.device, requires_grad=True)
    rest = torch.zeros(images.shape[0], 3, device=images.device, requires_grad=True)  # rotation, x and y shift
    optimizer = torch.optim.Adam([log_scale, rest], lr=lr)
    target = F.avg_pool2d(references, 2)

    def warps() -> Tensor:
        return torch.cat([rest[:, :1], log_scale.exp() - 1, rest[:, 1:]], dim=1)

    for _ in range(iterations):
        loss = (F.avg_pool2d(geometry_jitter(images, warps()), 2) - target).abs().mean(dim=(1, 2, 3))
        loss = (loss * moving).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return warps().detach()


def partner_table(samples: tuple[Sample, ...]) -> tuple[tuple[int, ...], ...]:
    """For each sample, the indices of the same person's photos with another expression (empty if unknown)."""
    by_identity: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        if sample.identity is not None:
            by_identity.setdefault(sample.identity, []).append(index)
    return tuple(
        tuple(j for j in by_identity.get(s.identity, ()) if samples[j].expression != s.expression)
        if s.identity is not None else ()
        for s in samples
    )


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of (N, 3, H, W) with probability 1/2.

    Done in the training step with the step's own generator rather than in loader workers, so the
    augmentation is reproducible across resumes and worker counts.
    """
    flip = flip_mask(images.shape[0], generator).to(images.device)
    return torch.where(flip, images.flip(3), images)


def flip_mask(count: int, generator: torch.Generator) -> Tensor:
    """(count, 1, 1, 1) bool: which images of a batch to mirror (probability 1/2 each)."""
    return (torch.rand(count, generator=generator) < 0.5)[:, None, None, None]


def colour_params(count: int, strength: float, generator: torch.Generator) -> Tensor:
    """(count, 5, 1, 1): per-image R, G, B gains, brightness and contrast, drawn uniformly around identity.

    strength 1 gives gains and contrast in [0.75, 1.25] and brightness shifts in [-0.3, 0.3] (images in [-1, 1]).
    """
    spread = torch.tensor([0.5, 0.5, 0.5, 0.6, 0.5]) * strength
    return ((torch.rand(count, 5, generator=generator) - 0.5) * spread)[:, :, None, None]


def colour_jitter(images: Tensor, params: Tensor) -> Tensor:
    """Apply colour_params to (N, 3, H, W) images in [-1, 1]; the same params on two photos change them alike.

    TFEID is shot under one studio light; jittering white balance, exposure and contrast makes the generator's
    edit less dependent on the colours it was trained on (faces in users' videos).
    """
    gains, bright, contrast = 1 + params[:, :3], params[:, 3:4], 1 + params[:, 4:5]
    return (((images + 1) * gains - 1) * contrast + bright).clamp(-1.0, 1.0)


def geometry_params(count: int, strength: float, generator: torch.Generator) -> Tensor:
    """(count, 4): per-image rotation (radians), scale, x and y shift (fractions of the half-width), uniform.

    strength 1 gives rotations in [-6, 6] degrees, scales in [0.94, 1.06] and shifts of up to 4% of the crop.
    """
    spread = torch.tensor([np.radians(6.0), 0.06, 0.08, 0.08]) * strength  # shifts: grid units, 1 = half-width
    return (torch.rand(count, 4, generator=generator) * 2 - 1) * spread


def geometry_jitter(images: Tensor, params: Tensor) -> Tensor:
    """Rotate, scale and shift (N, 3, H, W) images about their centre by geometry_params (edges repeat outwards).

    The pipeline's crops of users' faces are never aligned as exactly as TFEID's frontal studio photos (head
    turns, tracker jitter); the same params on a photo and its paired target keep the pair aligned to each other.
    """
    angle, scale, shift = params[:, 0], 1 + params[:, 1], params[:, 2:]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch (to resume exactly where a run stopped)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, samples_done: int) -> None:
        self.set_epoch(epoch)
        self.skip = samples_done

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def summarize_split(split: Split) -> str:
    """A small text table: images per expression in train and val, plus identity counts."""
    train, val = Counter(s.expression for s in split.train), Counter(s.expression for s in split.val)
    lines = [f"{'expression':<11} {'train':>6} {'val':>6}"]
    lines += [f"{name:<11} {train[name]:>6} {val[name]:>6}" for name in EXPRESSIONS]
    lines.append(f"{'total':<11} {len(split.train):>6} {len(split.val):>6}")
    def ids(samples: tuple[Sample, ...]) -> str:
        known = {s.identity for s in samples if s.identity is not None}
        unknown = sum(s.identity is None for s in samples)
        return f"{len(known)} identities" + (f" + {unknown} images of unknown identity" if unknown else "")
    val_names = sorted({s.identity for s in split.val if s.identity is not None})
    lines.append(f"train: {ids(split.train)}; val: {ids(split.val)} {val_names}")
    return "\n".join(lines)
