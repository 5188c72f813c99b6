"""evaluate's numbers: what the judges said about every source crop and its edits (Judgements), summarised per
target expression and overall, with the identity cost of a real change of expression as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.types import Frame
from pipeline.evaluation.artefacts import FLAG_SHARE
from usgan.expressions import EXPRESSIONS

GENERATOR, WARP, WARP_GENERATOR = "generator", "warp", "warp+generator"
WARP_TEXTURE, WARP_TEXTURE_GENERATOR = "warp+texture", "warp+texture+generator"
KEY_TARGETS = ("angry", "happy", "sad", "surprised")  # the targets the expression goal is stated over


@dataclass(frozen=True)
class ConditionJudgements:
    """What the judges said about the m edits of one condition (the same source/target pairs as the generator's)."""

    output_probs: NDArray[np.float32]  # (m, 7)
    identity: NDArray[np.float32]  # (m,)
    artefact: NDArray[np.float32] | None = None  # (m,) share of the mouth region painted (pipeline.evaluation.artefacts)


@dataclass(frozen=True)
class GeometryJudgements:
    """The warp's conditions and, per source, the geometry fit: the expression it named, its confidence (0: nothing
    removed) and validity (0: landmarks implausible, no warp)."""

    conditions: dict[str, ConditionJudgements]  # WARP and WARP_GENERATOR
    fit_named: NDArray[np.int64]  # (n,)
    fit_confidence: NDArray[np.float32]  # (n,)
    fit_validity: NDArray[np.float32]  # (n,)


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
    geometry: GeometryJudgements | None = None
    artefact: NDArray[np.float32] | None = None  # (m,) the generator's, as ConditionJudgements.artefact

    def condition(self, name: str) -> ConditionJudgements:
        """The judgements of one condition: GENERATOR (the fields above) or one of the geometry's."""
        if name == GENERATOR:
            return ConditionJudgements(self.output_probs, self.identity, self.artefact)
        if self.geometry is None or name not in self.geometry.conditions:
            raise KeyError(f"no judgements for condition {name!r}")
        return self.geometry.conditions[name]


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


# --- the conditions side by side (with an expression geometry model) ------------------------------------------------


def _all_or_none(values: list[float | None]) -> float | None:
    """Mean of values, None when any is missing (a mean over some of the targets would mislead)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def condition_row(j: Judgements, name: str, mask: NDArray[np.bool_]) -> dict[str, Any]:
    """Judge accuracy, mean identity cosine and its 5th percentile of one condition's edits in mask."""
    judged = j.condition(name)
    identity = judged.identity[mask]
    flagged = None if judged.artefact is None else _mean(judged.artefact[mask] > FLAG_SHARE)
    return {"judge": _mean(judged.output_probs[mask].argmax(1) == j.pair_target[mask]), "identity": _mean(identity),
            "identity_p5": float(np.percentile(identity, 5)) if identity.size else None, "artefacts": flagged}


def summarise_conditions(j: Judgements) -> dict[str, Any]:
    """Per target: the judge on unchanged inputs and each condition's judge / identity / its 5th percentile; then
    the mean over KEY_TARGETS (judge: mean of their rates; identity: over their edits) and over all edits."""
    names = (GENERATOR, *(j.geometry.conditions if j.geometry else ()))
    inputs = j.input_probs[j.pair_source].argmax(1) == j.pair_target
    per_target = {}
    for k, target in enumerate(EXPRESSIONS):
        mask = j.pair_target == k
        per_target[target] = {"count": int(mask.sum()), "inputs": _mean(inputs[mask]),
                              **{name: condition_row(j, name, mask) for name in names}}
    key = np.isin(j.pair_target, [EXPRESSIONS.index(t) for t in KEY_TARGETS])
    key_row: dict[str, Any] = {"targets": list(KEY_TARGETS), "count": int(key.sum()),
                               "inputs": _all_or_none([per_target[t]["inputs"] for t in KEY_TARGETS])}
    for name in names:
        key_row[name] = {**condition_row(j, name, key),
                         "judge": _all_or_none([per_target[t][name]["judge"] for t in KEY_TARGETS])}
    every = np.ones_like(inputs)
    all_row = {"count": int(inputs.size), "inputs": _mean(inputs), **{n: condition_row(j, n, every) for n in names}}
    return {"names": list(names), "per_target": per_target, "key_targets": key_row, "all": all_row}


def summarise_fit(j: Judgements) -> dict[str, Any]:
    """How often the geometry fit named each source's own expression, and how many fits had confidence 0 (the
    source's expression left in place) or validity 0 (landmarks implausible: no warp)."""
    if j.geometry is None:
        raise ValueError("summarise_fit: no geometry judgements")
    g = j.geometry
    named = g.fit_named == j.labels
    expressive = j.labels != EXPRESSIONS.index("neutral")
    return {"sources": int(named.size), "named": _mean(named), "expressive": int(expressive.sum()),
            "named_expressive": _mean(named[expressive]),
            "named_per_class": {name: _mean(named[j.labels == k]) for k, name in enumerate(EXPRESSIONS)},
            "confidence_mean": _mean(g.fit_confidence), "confidence_zero": int((g.fit_confidence == 0).sum()),
            "validity_zero": int((g.fit_validity == 0).sum())}


def _joined_geometry(parts: list[GeometryJudgements]) -> GeometryJudgements:
    conditions = {name: ConditionJudgements(*(joined_arrays([getattr(p.conditions[name], field) for p in parts])
                                              for field in ("output_probs", "identity", "artefact")))
                  for name in parts[0].conditions}
    fits = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("fit_named", "fit_confidence", "fit_validity")}
    return GeometryJudgements(conditions, **fits)


def joined_arrays(values: list[Any]) -> Any:
    """The arrays concatenated, None when any of them is None."""
    return None if any(v is None for v in values) else np.concatenate(values)


def concatenate_judgements(parts: list[Judgements]) -> Judgements:
    """One Judgements from several batches' (pair_source re-indexed to the concatenated sources)."""
    offsets = np.cumsum([0] + [len(p.labels) for p in parts[:-1]])

    def missing(values: list[Any]) -> bool:
        return any(v is None for v in values)

    def joined(name: str) -> Any:
        return joined_arrays([getattr(p, name) for p in parts])

    geometries = [p.geometry for p in parts]
    identities = [p.identities for p in parts]
    return Judgements(labels=joined("labels"), input_probs=joined("input_probs"),
                      pair_source=np.concatenate([p.pair_source + o for p, o in zip(parts, offsets)]),
                      pair_target=joined("pair_target"), output_probs=joined("output_probs"),
                      identity=joined("identity"), change=joined("change"), embeddings=joined("embeddings"),
                      identities=None if missing(identities) else sum(identities, ()),
                      geometry=None if missing(geometries) else _joined_geometry(geometries),
                      artefact=joined("artefact"))
