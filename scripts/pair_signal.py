"""How much of a paired target is expression? A ceiling for paired guidance (loss.lambda_pair) on a data set.

For every expression E and every person with a neutral reference photo, the pair (that neutral photo, a photo of
the same person showing E) is compared after avg-pooling, as the paired loss does. The table gives the mean pooled
L1 of the unchanged neutral photo to its target ("none"), and how much of it the training people's per-pixel median
change for E removes, on the training people and on the held-out ones, without and with register_to_reference.

A small share means the paired L1 is mostly differences no expression-conditioned edit can predict (exposure
between shots, hair, pose, how each person performs E), so the loss mainly pulls edits towards no change.
On TFEID (64 px, pool 4) it removes 3-9% on the training performers (happy the most) with or without registration,
and between -9% (sad) and +14% (happy) on the held-out performers 16, 17 and 30.

Example:
    python scripts/pair_signal.py ~/.cache/usgan/data/tfeid/128 --identities 16,17,30
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from usgan.data import (  # noqa: E402
    DataConfig, geometry_jitter, load_image, reference_indices, register_to_reference, split_samples,
)
from usgan.dataset import Sample, parse_identities, scan_dataset  # noqa: E402
from usgan.errors import UserError  # noqa: E402
from usgan.expressions import EXPRESSIONS  # noqa: E402


@dataclass(frozen=True)
class PairSignal:
    expression: str
    registered: bool
    train_pairs: int
    val_pairs: int
    train_l1: float  # mean pooled L1, unchanged neutral photo vs target
    train_explained: float  # share of train_l1 that the training median change removes
    val_l1: float
    val_explained: float


def neutral_pairs(samples: tuple[Sample, ...], references: tuple[int, ...], expression: str) -> list[tuple[int, int]]:
    """(reference neutral photo, photo showing expression) index pairs, one per photo of that expression;
    references is reference_indices(samples)."""
    return [(references[i], i) for i, s in enumerate(samples)
            if s.expression == expression and references[i] != i and samples[references[i]].expression == "neutral"]


def explained(pooled: Tensor, pairs: list[tuple[int, int]], change: Tensor) -> tuple[float, float]:
    """(mean L1 with no change, share of it that adding `change` to each source removes)."""
    sources, targets = pooled[[s for s, _ in pairs]], pooled[[t for _, t in pairs]]
    none = (targets - sources).abs().mean()
    edited = (targets - sources - change).abs().mean()
    return float(none), float(1 - edited / none)


def pair_signal(data: Path, val_identities: tuple[str, ...], size: int = 64, pool: int = 4) -> list[PairSignal]:
    samples = tuple(scan_dataset(data))
    split = split_samples(list(samples), DataConfig(val_identities=val_identities, val_identity_count=3), data)
    held_out = {s.path for s in split.val}
    references = reference_indices(samples)
    images = torch.stack([load_image(s.path, size) for s in samples])
    registered = geometry_jitter(images, register_to_reference(images, images[list(references)]))
    results = []
    for is_registered, batch in ((False, images), (True, registered)):
        pooled = F.avg_pool2d(batch, pool)
        for expression in EXPRESSIONS:
            pairs = neutral_pairs(samples, references, expression)
            train = [p for p in pairs if samples[p[1]].path not in held_out]
            val = [p for p in pairs if samples[p[1]].path in held_out]
            if not train or not val:
                continue
            change = (pooled[[t for _, t in train]] - pooled[[s for s, _ in train]]).median(dim=0).values
            results.append(PairSignal(expression, is_registered, len(train), len(val),
                                      *explained(pooled, train, change), *explained(pooled, val, change)))
    if not results:
        raise UserError(f"{data}: no person has a neutral photo and another expression in both train and held-out")
    return results


def markdown(results: list[PairSignal]) -> str:
    lines = ["| expression | registered | pairs (train / held-out) | L1 train | explained train | L1 held-out | "
             "explained held-out |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.expression} | {'yes' if r.registered else 'no'} | {r.train_pairs} / {r.val_pairs} | "
              f"{r.train_l1:.3f} | {r.train_explained:+.0%} | {r.val_l1:.3f} | {r.val_explained:+.0%} |"
              for r in results]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--identities", default="", metavar="ID,ID,...",
              help="Held-out people (default: 3 drawn as the trainer's data.val_identity_count 3, seed 0 does).")
@click.option("--size", default=64, show_default=True, type=click.IntRange(8, 512), help="Image size to compare at.")
@click.option("--pool", default=4, show_default=True, type=click.IntRange(1, 64), help="Avg-pool factor (pair_pool).")
def main(data: Path, identities: str, size: int, pool: int) -> None:
    """Print how much of DATA's paired targets an expression edit could predict (a Markdown table).

    \b
    Example:
      python scripts/pair_signal.py ~/.cache/usgan/data/tfeid/128 --identities 16,17,30
    """
    torch.manual_seed(0)
    try:
        results = pair_signal(data, parse_identities(identities), size, pool)
    except UserError as error:
        raise click.ClickException(str(error)) from error
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
