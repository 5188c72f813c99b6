"""A frozen, adversarially robust expression classifier that guides the generator (ours, not in the paper).

The critic's expression head is trained with the critic, on a few hundred photos, and the generator learns to fool
it: on TFEID the stage-3 generator's *sad* edits were called sad by it 96% of the time and by the independent judge
hardly more often than the inputs. This classifier is trained once, before the GAN, on the training people's photos
only, with PGD adversarial examples (Madry et al. 2018) in an L2 ball around each photo's luma. A robust classifier
cannot be flipped by a faint pattern, so its gradient points at changes a person would see (Santurkar et al. 2019,
"Image synthesis with a single robust classifier"); the generator's loss then adds lambda_classifier * CE(guide(edit),
target). It reads the luma only, standardised per image, so neither colour nor exposure can carry an expression.

Train it with `python cli.py train-classifier --data DIR --out FILE`; the file is safetensors with a JSON header.
The `fer` judge of `evaluate` is never used here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgan.checkpoint import CheckpointError, load_tensors, save_tensors
from usgan.config import ConfigError, from_mapping, to_mapping
from usgan.data import (
    DataConfig, colour_jitter, colour_params, geometry_jitter, geometry_params, load_samples, random_flip,
    split_samples,
)
from usgan.dataset import DataError, Sample, scan_dataset
from usgan.expressions import EXPRESSIONS
from usgan.landmarks import luma

log = logging.getLogger(__name__)

FORMAT_CLASSIFIER = "usgan-expression-classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 64  # the generator's training resolution
    width: int = 24  # channels of the first conv; doubled at each of the three stride-2 stages
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    # PGD adversarial training: L2 radius in luma units (images in [-1, 1]; 1.0 over 64 x 64 pixels is an RMS change
    # of 1/64, about 2 grey levels) and the number of ascent steps. eps 0 trains a plain classifier.
    robust_eps: float = 0.5
    robust_steps: int = 1
    colour_jitter: float = 1.0
    geometry_jitter: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"classifier.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "robust_eps", "colour_jitter", "geometry_jitter"):
            if getattr(self, name) < 0:
                raise ConfigError(f"classifier.{name} must be >= 0, got {getattr(self, name)}")
        if self.robust_steps < 0:
            raise ConfigError(f"classifier.robust_steps must be >= 0, got {self.robust_steps}")


def standardise(grey: Tensor) -> Tensor:
    """Zero mean and unit spread per image, so exposure and contrast carry no expression."""
    flat = grey.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (grey - mean) / (std + 0.05)


def _stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    ]


class ExpressionClassifier(nn.Module):
    """Luma CNN: 3x3 stem, three stride-2 stages (2w, 4w, 8w channels), global average pool, linear to E logits."""

    def __init__(self, width: int = 32, num_expressions: int = len(EXPRESSIONS)):
        super().__init__()
        self.width = width
        self.num_expressions = num_expressions
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            *_stage(width, 2 * width, 2), *_stage(2 * width, 4 * width, 2), *_stage(4 * width, 8 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * width, num_expressions),
        )

    def logits_of_luma(self, grey: Tensor) -> Tensor:
        return self.net(standardise(grey))

    def forward(self, images: Tensor) -> Tensor:
        """(N, E) expression logits of (N, 3, H, W) RGB crops in [-1, 1]."""
        return self.logits_of_luma(luma(images))


class FrozenClassifier(nn.Module):
    """An ExpressionClassifier in eval mode with no trainable parameters (gradients still reach its input)."""

    def __init__(self, classifier: ExpressionClassifier, image_size: int):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.image_size = image_size

    def train(self, mode: bool = True) -> FrozenClassifier:  # stays in eval mode (BatchNorm, Dropout)
        return self

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.classifier(images)


def pgd_l2(loss_of: Callable[[Tensor], Tensor], grey: Tensor, eps: float, steps: int) -> Tensor:
    """grey plus the perturbation of L2 norm <= eps (per image) that most raises loss_of, by `steps` normalised
    gradient-ascent steps of 2.5 eps / steps (Madry et al.); the result is detached."""
    if eps <= 0 or steps <= 0:
        return grey.detach()
    step = 2.5 * eps / steps
    delta = torch.zeros_like(grey, requires_grad=True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_of(grey + delta), delta)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta.detach() + step * grad / norm
        scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
        delta = (delta * scale).requires_grad_(True)
    return (grey + delta).detach()


def augment(images: Tensor, config: ClassifierConfig, generator: torch.Generator) -> Tensor:
    """Mirror, colour- and geometry-jitter a batch as the GAN's training step does (usgan.data)."""
    images = random_flip(images, generator)
    if config.colour_jitter > 0:
        images = colour_jitter(images, colour_params(images.shape[0], config.colour_jitter, generator))
    if config.geometry_jitter > 0:
        images = geometry_jitter(images, geometry_params(images.shape[0], config.geometry_jitter, generator))
    return images


@torch.no_grad()
def accuracy_per_class(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 128) -> dict[str, float]:
    """Share of correctly classified images per expression (NaN where none), plus 'overall'."""
    was_training = model.training
    model.eval()
    predicted = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    model.train(was_training)
    result = {}
    for index, name in enumerate(EXPRESSIONS):
        mask = labels == index
        result[name] = float((predicted[mask] == index).float().mean()) if bool(mask.any()) else math.nan
    result["overall"] = float((predicted == labels).float().mean()) if len(labels) else math.nan
    return result


def train_classifier(
    train: tuple[Sample, ...], val: tuple[Sample, ...], config: ClassifierConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[ExpressionClassifier, dict[str, float]]:
    """Train on `train` (robustly, per config); returns the model in eval mode and its accuracy on `val`."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = load_samples(train, config.image_size)
    val_images, val_labels = load_samples(val, config.image_size)
    model = ExpressionClassifier(config.width)
    # Class-balanced: TFEID has half as many neutral photos as the others, and a rare class would never be predicted.
    counts = torch.bincount(labels, minlength=len(EXPRESSIONS)).float()
    weights = torch.where(counts > 0, counts.sum() / (len(EXPRESSIONS) * counts.clamp_min(1)), 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = max(len(train) // config.batch_size, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * batches)
    accuracy: dict[str, float] = {}
    for epoch in range(config.epochs):
        order = torch.randperm(len(train), generator=generator)
        for index in range(batches):
            chosen = order[index * config.batch_size:(index + 1) * config.batch_size]
            grey = luma(augment(images[chosen], config, generator))
            target = labels[chosen]
            model.eval()  # the attack sees the model as the generator will (BatchNorm running statistics)
            grey = pgd_l2(lambda g: F.cross_entropy(model.logits_of_luma(g), target), grey,
                          config.robust_eps, config.robust_steps)
            model.train()
            loss = F.cross_entropy(model.logits_of_luma(grey), target, weight=weights, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None or epoch == config.epochs - 1:  # measured once per epoch at most
            accuracy = accuracy_per_class(model, val_images, val_labels) if len(val) else {}
        if progress is not None:
            progress(epoch + 1, accuracy)
    return model.eval(), accuracy


def save_classifier(path: Path, model: ExpressionClassifier, config: ClassifierConfig, extra: dict) -> None:
    metadata = {"format": FORMAT_CLASSIFIER, "version": 1, "expressions": list(EXPRESSIONS),
                "config": to_mapping(config), **extra}
    save_tensors(path, model.state_dict(), metadata)


def load_classifier(path: Path, device: torch.device | str = "cpu") -> tuple[FrozenClassifier, dict]:
    """A frozen classifier from a train-classifier file; a wrong or damaged file is a one-line CheckpointError."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT_CLASSIFIER:
        raise CheckpointError(f"{path}: not an expression classifier file (format {metadata.get('format')!r})")
    if tuple(metadata.get("expressions", ())) != EXPRESSIONS:
        raise CheckpointError(
            f"{path}: classifier expressions {metadata.get('expressions')} differ from {list(EXPRESSIONS)}")
    try:
        config = from_mapping(ClassifierConfig, metadata.get("config", {}), f"{path} config")
        model = ExpressionClassifier(config.width)
        model.load_state_dict(tensors, strict=True)
    except (ConfigError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path}: bad classifier file: {str(error).splitlines()[0]}") from error
    return FrozenClassifier(model, config.image_size).to(device), metadata


def fit_classifier_file(
    data_dir: Path, out: Path, data: DataConfig, config: ClassifierConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train on data_dir's training split (as a GAN run with the same DataConfig splits it) and write `out`;
    returns the accuracy per expression on the validation split, also stored in the file's header."""
    split = split_samples(scan_dataset(data_dir), data, data_dir)
    if len(split.train) < config.batch_size:
        raise DataError(f"{data_dir}: {len(split.train)} training images, fewer than one batch ({config.batch_size})")
    started = time.perf_counter()
    model, accuracy = train_classifier(split.train, split.val, config, progress)
    save_classifier(out, model, config, {
        "val_accuracy": accuracy, "train_images": len(split.train), "data": str(data_dir),
        "train_identities": sorted({s.identity for s in split.train}),
        "val_identities": sorted({s.identity for s in split.val}),
        "train_seconds": round(time.perf_counter() - started),
    })
    return accuracy
