"""evaluate's inputs: aligned crops as prepare-data writes them (DIR/<expression>/*.png, optional DIR/index.csv),
chosen to cover every expression and identity, and their conversion to and from the generator's tensors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.types import Frame
from usgan.dataset import Sample, scan_dataset
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS


class EvaluateError(UserError):
    """Evaluation inputs that cannot be used; the message names the file."""


def spread_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Order samples so that any prefix covers every expression and as many identities as it can.

    Round-robin over the expressions; each turn takes that expression's sample of the least-used identity so far.
    """
    remaining = {name: [s for s in samples if s.expression == name] for name in EXPRESSIONS}
    used: Counter[str | None] = Counter()
    ordered = []
    while any(remaining.values()):
        for name in EXPRESSIONS:
            if remaining[name]:
                pick = min(remaining[name], key=lambda s: used[s.identity])  # min keeps the first of ties
                remaining[name].remove(pick)
                used[pick.identity] += 1
                ordered.append(pick)
    return ordered


def select_sources(data: Path, identities: Sequence[str], limit: int | None) -> list[Sample]:
    """The aligned crops to evaluate: filtered by identity, spread over expressions, at most limit."""
    samples = scan_dataset(data)
    if identities:
        known = {s.identity for s in samples}
        missing = sorted(set(identities) - known)
        if missing:
            raise EvaluateError(f"{data}: identities not in the data: {', '.join(missing)}")
        samples = [s for s in samples if s.identity in set(identities)]
    return spread_samples(samples)[:limit]


def read_crop(path: Path) -> Frame:
    """A square aligned crop as BGR uint8."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvaluateError(f"{path}: not a readable image")
    if image.shape[0] != image.shape[1]:
        raise EvaluateError(f"{path}: {image.shape[1]}x{image.shape[0]} is not a square aligned crop")
    return image


def read_crops(samples: Sequence[Sample]) -> list[Frame]:
    """Crops of one batch; all must share one size (prepare-data writes one size per folder)."""
    crops = [read_crop(s.path) for s in samples]
    for sample, crop in zip(samples, crops):
        if crop.shape != crops[0].shape:
            raise EvaluateError(f"{sample.path}: size {crop.shape[0]} differs from {crops[0].shape[0]} of the others")
    return crops


def bgr_to_tensor(images: Sequence[Frame]) -> torch.Tensor:
    """(N, 3, H, W) RGB float in [-1, 1] from BGR uint8 images."""
    array = np.ascontiguousarray(np.stack(images)[..., ::-1])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_bgr(images: torch.Tensor) -> list[Frame]:
    """BGR uint8 images from (N, 3, H, W) RGB float in [-1, 1]."""
    array = images.add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image[..., ::-1]) for image in array]

