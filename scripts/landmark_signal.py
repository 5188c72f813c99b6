"""How much of an expression is a shape that landmarks see? The ceiling of landmark guidance (loss.lambda_landmark)
on a data set, and how far a generator's edits go towards it.

Landmarks are InsightFace's 2d106det (usgan.landmarks), aligned on the nose and eye centres. For every expression E
and every person with a neutral photo, the pairs (a neutral photo, a photo of the same person showing E) are
compared on the mouth, brow and eye landmarks. The table gives the mean landmark change of those pairs in percent of
the crop width, and the share of it that the training people's mean change for E (the guidance's target) removes,
on the training people and on the held-out ones (compare scripts/pair_signal.py for pixels).

With --weights, each held-out photo is also edited to every other expression, and the table adds how far the
edit moved the landmarks along the target change: 1.0 is the whole of the training people's mean change, 0 none.
On TFEID (64 px) the target removes 5% (fearful) to 48% (happy) of a held-out performer's landmark change; the
shipped generator's edits go 0.14-0.27 of the way, those of configs/train/tfeid_landmark.yaml 0.32-0.79.

Example:
    python scripts/landmark_signal.py ~/.cache/usgan/data/tfeid/128 --identities 16,17,30 \\
        --weights weights/usgan_tfeid.safetensors
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from usgan.checkpoint import load_generator  # noqa: E402
from usgan.data import (  # noqa: E402
    DataConfig, load_samples, split_samples,
)
from usgan.dataset import Sample, parse_identities, scan_dataset  # noqa: E402
from usgan.errors import UserError  # noqa: E402
from usgan.expressions import EXPRESSIONS  # noqa: E402
from usgan.inference import apply_generator  # noqa: E402
from usgan.landmarks import (  # noqa: E402
    EXPRESSIVE, LandmarkModel, align_on_stable, expression_shape_changes, landmarks_of,
)


@dataclass(frozen=True)
class LandmarkSignal:
    expression: str
    train_pairs: int
    val_pairs: int
    train_change: float  # mean |landmark change| of the pairs, % of the crop width
    train_explained: float  # share of train_change that the training mean change removes
    val_change: float
    val_explained: float
    edit_progress: float | None = None  # held-out edits: projection of their change on the target change


def pair_changes(aligned: Tensor, samples: tuple[Sample, ...], people: set[str], expression: str) -> Tensor:
    """(P, K, 2) expressive-landmark changes from each person's neutral photos to their photos of expression."""
    changes = []
    for person in sorted(people):
        neutral = [i for i, s in enumerate(samples) if s.identity == person and s.expression == "neutral"]
        shown = [i for i, s in enumerate(samples) if s.identity == person and s.expression == expression]
        changes += [aligned[t] - aligned[n] for n in neutral for t in shown]
    return torch.stack(changes)[:, list(EXPRESSIVE)] if changes else torch.zeros(0, len(EXPRESSIVE), 2)


def explained(changes: Tensor, mean_change: Tensor) -> tuple[float, float]:
    """(mean |change| in % of the crop, share of it that subtracting mean_change removes)."""
    none = changes.abs().mean()
    return float(100 * none), float(1 - (changes - mean_change).abs().mean() / none)


def edit_progress(model: LandmarkModel, weights: Path, images: Tensor, labels: Tensor, changes: Tensor,
                  edit_gain: float | None) -> list[float]:
    """Per target expression: sum(edit change . target change) / sum(|target change|^2) over the held-out photos
    edited to it from another expression (expressive landmarks, stable-aligned)."""
    generator, info = load_generator(weights)
    if edit_gain is not None:
        info = dataclasses.replace(info, edit_gain=edit_gain)
    before = landmarks_of(model, images)
    progress = []
    for index, name in enumerate(EXPRESSIONS):
        keep = labels != index
        edited = apply_generator(generator, info, images[keep], [name] * int(keep.sum()))
        after = landmarks_of(model, edited)
        moved = (align_on_stable(after, before.mean(0)) - align_on_stable(before[keep], before.mean(0)))
        wanted = changes[index] - changes[labels[keep]]
        moved, wanted = moved[:, list(EXPRESSIVE)], wanted[:, list(EXPRESSIVE)]
        progress.append(float((moved * wanted).sum() / (wanted * wanted).sum().clamp_min(1e-12)))
    return progress


def landmark_signal(data: Path, val_identities: tuple[str, ...], size: int = 64, weights: Path | None = None,
                    edit_gain: float | None = None) -> list[LandmarkSignal]:
    samples = tuple(scan_dataset(data))
    split = split_samples(list(samples), DataConfig(val_identities=val_identities, val_identity_count=3), data)
    held_out = {s.identity for s in split.val}
    training = {s.identity for s in split.train}
    model = LandmarkModel.load()
    images, labels = load_samples(samples, size)
    points = landmarks_of(model, images)
    train_rows = [i for i, s in enumerate(samples) if s.identity in training]
    changes = expression_shape_changes(points[train_rows], labels[train_rows],
                                       [samples[i].identity for i in train_rows], len(EXPRESSIONS))
    aligned = align_on_stable(points, points[train_rows].mean(0))
    progress: list[float | None] = [None] * len(EXPRESSIONS)
    if weights is not None:
        val_rows = [i for i, s in enumerate(samples) if s.identity in held_out]
        progress = edit_progress(model, weights, images[val_rows], labels[val_rows], changes, edit_gain)
    results = []
    for index, expression in enumerate(EXPRESSIONS):
        train = pair_changes(aligned, samples, training, expression)
        val = pair_changes(aligned, samples, held_out, expression)
        if expression == "neutral" or not len(train) or not len(val):
            continue
        mean_change = changes[index, list(EXPRESSIVE)]
        results.append(LandmarkSignal(expression, len(train), len(val), *explained(train, mean_change),
                                      *explained(val, mean_change), progress[index]))
    if not results:
        raise UserError(f"{data}: no person has a neutral photo and another expression in both train and held-out")
    return results


def markdown(results: list[LandmarkSignal]) -> str:
    edits = results[0].edit_progress is not None
    lines = ["| expression | pairs (train / held-out) | change train | explained train | change held-out | "
             "explained held-out |" + (" edit progress |" if edits else ""),
             "|---|---|---|---|---|---|" + ("---|" if edits else "")]
    lines += [f"| {r.expression} | {r.train_pairs} / {r.val_pairs} | {r.train_change:.2f}% | "
              f"{r.train_explained:+.0%} | {r.val_change:.2f}% | {r.val_explained:+.0%} |"
              + (f" {r.edit_progress:.2f} |" if edits else "") for r in results]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--identities", default="", metavar="ID,ID,...",
              help="Held-out people (default: 3 drawn as the trainer's data.val_identity_count 3, seed 0 does).")
@click.option("--size", default=64, show_default=True, type=click.IntRange(16, 512), help="Image size to compare at.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also measure how far this generator's edits of the held-out photos move the landmarks.")
@click.option("--edit-gain", type=click.FloatRange(min=0, min_open=True), help="Override the weights' edit gain.")
def main(data: Path, identities: str, size: int, weights: Path | None, edit_gain: float | None) -> None:
    """Print how much of DATA's expression changes the landmark guidance's target explains (a Markdown table).

    \b
    Example:
      python scripts/landmark_signal.py ~/.cache/usgan/data/tfeid/128 --identities 16,17,30
    """
    try:
        with torch.no_grad():
            results = landmark_signal(data, parse_identities(identities), size, weights, edit_gain)
    except UserError as error:
        raise click.ClickException(str(error)) from error
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
