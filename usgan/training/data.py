"""Training data: the split by identity, the loader, the per-image transforms and same-person pairs.

The folder format itself (Sample, scan_dataset) is usgan.dataset's, shared with prepare-data and evaluate.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import signal
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from usgan.dataset import DataError, Sample, read_landmarks, scan_dataset
from usgan.expressions import EXPRESSIONS
from usgan.training.config import DataConfig, TrainConfig
from usgan.training.distributed import DistInfo
from usgan.training.warp import WarpSource, load_warp_source

log = logging.getLogger(__name__)


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


def split_table(split: Split) -> str:
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


class FaceDataset(Dataset):
    """Aligned crops with their expression labels: item i -> ((3, S, S) in [-1, 1], label index, i)."""

    def __init__(self, samples: tuple[Sample, ...], image_size: int):
        self.samples = samples
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        sample = self.samples[index]
        return load_image(sample.path, self.image_size), sample.label, index


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


# ---------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairSource:
    """Where paired targets come from: the training samples and, per sample, its same-person partners."""

    samples: tuple[Sample, ...]
    partners: tuple[tuple[int, ...], ...]
    image_size: int


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


def draw_pairs(
    indices: Tensor, targets: Tensor, pairs: PairSource, fraction: float, rng: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Give the first `fraction` of the batch a same-person partner photo as target: (targets, x_pair, mask, the
    partner's sample index or -1)."""
    targets = targets.clone()
    x_pair = torch.zeros(len(indices), 3, pairs.image_size, pairs.image_size)
    mask = torch.zeros(len(indices), dtype=torch.bool)
    partner = torch.full((len(indices),), -1, dtype=torch.long)
    choices = torch.rand(len(indices), generator=rng)  # drawn for every sample so the RNG use is fixed per step
    for i in range(round(fraction * len(indices))):
        partners = pairs.partners[int(indices[i])]
        if partners:
            index = partners[int(choices[i] * len(partners))]
            x_pair[i] = load_image(pairs.samples[index].path, pairs.image_size)
            targets[i], mask[i], partner[i] = pairs.samples[index].label, True, index
    return targets, x_pair, mask, partner


# ----------------------------------------------------------------------------------------- transforms


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


# --------------------------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class DataBundle:
    loader: DataLoader
    sampler: ResumableSampler
    fixed_images: Tensor  # (R, 3, S, S) in [-1, 1], the rows of every sample grid
    batches_per_epoch: int
    name: str
    pairs: PairSource | None = None  # set when config.pair_fraction > 0
    warp: WarpSource | None = None  # set when config.geometry_model names a geometry file
    fixed_points: Tensor | None = None  # (R, 106, 2) the grid rows' landmarks, with warp


def spread_over_expressions(samples: tuple[Sample, ...], count: int) -> list[Sample]:
    """Up to count samples, taking one per expression in turn, so grid rows show varied source expressions."""
    groups = [[s for s in samples if s.expression == name] for name in EXPRESSIONS]
    ordered = [s for row in zip_longest(*groups) for s in row if s is not None]
    return ordered[:count]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: Ctrl-C and SLURM/kill send SIGINT/SIGTERM to the whole process group. Workers ignore
    them, so the main process finishes its step and checkpoints (a worker dying first would crash it instead);
    the loader shuts its workers down when the main process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def setup_data(config: TrainConfig, data_dir: Path, info: DistInfo) -> DataBundle:
    """The training split's loader (sharded over the processes), the sample-grid rows and the pair source."""
    split = split_samples(scan_dataset(data_dir), config.data, data_dir)
    global_batch = config.optim.batch_size * info.world_size
    if len(split.train) < global_batch:
        raise DataError(f"{data_dir}: {len(split.train)} training images, fewer than one batch ({global_batch})")
    dataset = FaceDataset(split.train, config.model.image_size)
    sampler = ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=config.data.seed)
    loader = DataLoader(
        dataset, batch_size=config.optim.batch_size, sampler=sampler, num_workers=config.data.workers,
        drop_last=True, pin_memory=info.device.type == "cuda", persistent_workers=config.data.workers > 0,
        worker_init_fn=ignore_stop_signals,
    )
    rows = spread_over_expressions(split.val or split.train, config.logging.sample_rows)
    fixed = torch.stack([load_image(s.path, config.model.image_size) for s in rows])
    name = config.data.name or Path(data_dir).resolve().name
    pairs = None
    if config.pair_fraction > 0:
        pairs = PairSource(split.train, partner_table(split.train), config.model.image_size)
        log.info("paired guidance: %d of %d training images have a same-person partner",
                 sum(bool(p) for p in pairs.partners), len(split.train))
    warp = fixed_points = None
    if config.geometry_model:
        warp = load_warp_source(config.geometry_model, data_dir, split.train, config.texture_model)
        fixed_points = torch.from_numpy(read_landmarks(data_dir).lookup(Path(data_dir), rows)[0]).float()
        log.info("warped input: geometry model %s, landmarks of %d training images", config.geometry_model,
                 len(split.train))
    return DataBundle(loader, sampler, fixed, sampler.num_samples // config.optim.batch_size, name, pairs, warp,
                      fixed_points)


def describe_data(config: TrainConfig, data_dir: Path) -> str:
    """The --dry-run data summary: images per expression and split."""
    return split_table(split_samples(scan_dataset(data_dir), config.data, data_dir))
