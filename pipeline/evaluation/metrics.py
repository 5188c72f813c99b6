"""evaluate's numbers: what the judges said about every source crop and its edits (Judgements), summarised per
target expression and overall, with the identity cost of a real change of expression as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.types import Frame
from usgan.expressions import EXPRESSIONS


@dataclass(frozen=True)
class Judgements:
    """Raw judge outputs. n sources, m edited outputs (source index, target index) each."""

    labels: NDArray[np.int64]  # (n,) own expression index of each source
    input_probs: NDArray[np.float32]  # (n, 7)
    pair_source: NDArray[np.int64]  # (m,)
    pair_target: NDArray[np.int64]  # (m,)
    output_probs: NDArray[np.float32]  # (m, 7)
    identity: NDArray[np.float32]  # (m,) ArcFace cosine, input vs output
    change: NDArray[np.float32] | None = None  # (m, 2): mean |output - input| and mean |its colour part|, levels
    # (n, d) ArcFace embeddings of the sources, and who each one is (None: unknown), for the real-pair reference
    embeddings: NDArray[np.float32] | None = None
    identities: tuple[str | None, ...] | None = None


def change_stats(source: Frame, output: Frame) -> tuple[float, float]:
    """Mean |output - input| over pixels and channels (grey levels), and the same for its colour part: the change
    minus its mean over the three channels (0 for a change that only darkens or lightens)."""
    change = output.astype(np.float32) - source.astype(np.float32)
    colour = change - change.mean(axis=2, keepdims=True)
    return float(np.abs(change).mean()), float(np.abs(colour).mean())


def _mean(values: NDArray) -> float | None:
    """Mean of an array (a rate for a boolean one), None when empty (JSON null, '–' in the report)."""
    return float(values.mean()) if values.size else None


def class_metrics(j: Judgements, mask_sources: NDArray[np.bool_], mask_pairs: NDArray[np.bool_]) -> dict[str, Any]:
    """Judge accuracy on real photos, on unchanged inputs (baseline) and on outputs, and the outputs' mean identity
    cosine, for a subset of rows."""
    targets = j.pair_target[mask_pairs]
    inputs = j.input_probs[j.pair_source[mask_pairs]]
    outputs = j.output_probs[mask_pairs]
    rows = np.arange(targets.size)
    return {
        "real_accuracy": _mean(j.input_probs[mask_sources].argmax(1) == j.labels[mask_sources]),
        "real_count": int(mask_sources.sum()),
        "baseline": _mean(inputs.argmax(1) == targets),
        "output_accuracy": _mean(outputs.argmax(1) == targets),
        "input_target_probability": float(inputs[rows, targets].mean()) if targets.size else None,
        "output_target_probability": float(outputs[rows, targets].mean()) if targets.size else None,
        "identity": _mean(j.identity[mask_pairs]),
        "count": int(targets.size),
    }


def real_pair_identity(j: Judgements) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """ArcFace cosine between every two source photos of one known person with different expressions, and the
    second photo's expression: what a real change of expression costs in identity (the reference for an edit's)."""
    if j.embeddings is None or j.identities is None:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    people: dict[str, list[int]] = {}
    for row, name in enumerate(j.identities):
        if name is not None:
            people.setdefault(name, []).append(row)
    cosines, targets = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
    for rows in map(np.array, people.values()):  # per person: memory grows with one person's photos, not all
        first, second = np.nonzero(j.labels[rows][:, None] != j.labels[rows][None, :])
        unit = j.embeddings[rows] / np.maximum(np.linalg.norm(j.embeddings[rows], axis=1, keepdims=True), 1e-12)
        cosines.append((unit @ unit.T)[first, second].astype(np.float32))
        targets.append(j.labels[rows][second])
    return np.concatenate(cosines), np.concatenate(targets)


def summarise_judgements(j: Judgements) -> dict[str, Any]:
    """Identity statistics, per-class and overall expression metrics."""
    per_class = {name: class_metrics(j, j.labels == k, j.pair_target == k) for k, name in enumerate(EXPRESSIONS)}
    real_cosines, real_targets = real_pair_identity(j)
    for k, name in enumerate(EXPRESSIONS):
        per_class[name]["real_identity"] = _mean(real_cosines[real_targets == k])
    overall = class_metrics(j, np.ones_like(j.labels, bool), np.ones_like(j.pair_target, bool))
    overall["real_identity"] = _mean(real_cosines)
    scores = [m["output_accuracy"] for m in per_class.values() if m["output_accuracy"] is not None]
    overall["output_accuracy_macro"] = float(np.mean(scores)) if scores else None
    identity = {"mean": None, "p5": None, "min": None}
    if j.identity.size:
        identity = {"mean": float(j.identity.mean()), "p5": float(np.percentile(j.identity, 5)),
                    "min": float(j.identity.min())}
    identity["real_pairs"] = {"mean": _mean(real_cosines), "count": int(real_cosines.size)}
    metrics = {"identity": identity, "expression": {"per_class": per_class, "overall": overall}}
    if j.change is not None and j.change.size:
        # Colour share: how much of the change is colour rather than shading, over all outputs.
        metrics["change"] = {"mean_abs": float(j.change[:, 0].mean()),
                             "colour_share": float(j.change[:, 1].sum() / max(j.change[:, 0].sum(), 1e-9))}
    return metrics
