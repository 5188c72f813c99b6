"""evaluate: how well a generator changes expressions (fer judge) and keeps identity (ArcFace), plus video flicker.

Inputs are aligned crops as prepare-data writes them (DIR/<expression>/*.png, optional DIR/index.csv), so each
crop's 5 landmarks are the crop template itself. Every crop is edited towards every other expression.
Outputs: REPORT/metrics.json, REPORT/report.md and REPORT/grid.png, each written atomically.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.faces import FaceDetector, DetectorConfig, crop_template
from pipeline.judges import ExpressionJudge, IdentityJudge, cosine_similarity
from pipeline.types import Face, Frame, Mask
from usgan.checkpoint import WeightsInfo, gain_text, load_generator
from usgan.dataset import Sample, scan_dataset
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.files import atomic_write
from usgan.inference import apply_generator
from usgan.model import Generator

log = logging.getLogger(__name__)

GRID_HEADER = 22  # pixels of column titles above the grid


class EvaluateError(UserError):
    """Evaluation inputs that cannot be used; the message names the file."""


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate. weights and data go together; video_pair alone measures flicker only."""

    out: Path
    weights: Path | None = None
    data: Path | None = None
    identities: tuple[str, ...] = ()  # only these performers (e.g. the validation split); empty = all
    limit: int | None = None  # at most this many source crops, spread over the expressions
    batch_size: int = 8
    grid_rows: int = 8
    grid_cell: int = 128
    video_pair: tuple[Path, Path] | None = None  # (input video, its processed output)
    device: str = "cpu"
    # Evaluate the weights at these gains instead of their header's: edit_gain replaces the header's gains (its
    # per-expression ones too); expression_gains override it per target expression.
    edit_gain: float | None = None
    expression_gains: tuple[tuple[str, float], ...] = ()


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


@dataclass(frozen=True)
class Judges:
    expression: ExpressionJudge
    identity: IdentityJudge


# --- sources --------------------------------------------------------------------------------------------------------


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


# --- generator on uint8 crops -----------------------------------------------------------------------------------------


def bgr_to_tensor(images: Sequence[Frame]) -> torch.Tensor:
    """(N, 3, H, W) RGB float in [-1, 1] from BGR uint8 images."""
    array = np.ascontiguousarray(np.stack(images)[..., ::-1])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_bgr(images: torch.Tensor) -> list[Frame]:
    """BGR uint8 images from (N, 3, H, W) RGB float in [-1, 1]."""
    array = images.add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image[..., ::-1]) for image in array]


def edit_crops(generator: Generator, info: WeightsInfo, crops: Sequence[Frame], targets: Sequence[str]) -> list[Frame]:
    """Each crop edited towards its target expression, at the crop's own resolution."""
    return tensor_to_bgr(apply_generator(generator, info, bgr_to_tensor(crops), list(targets)))


# --- judging ---------------------------------------------------------------------------------------------------------


def judge_batch(
    generator: Generator, info: WeightsInfo, judges: Judges, crops: Sequence[Frame], labels: Sequence[int],
) -> tuple[NDArray, NDArray, list[tuple[int, int, NDArray, float, tuple[float, float]]]]:
    """Input probabilities (B, 7), input embeddings (B, d) and, for every other target, (source, target, output
    probs, identity cosine, change_stats)."""
    landmarks = [crop_template(crops[0].shape[0]).astype(np.float32)] * len(crops)
    input_probs = judges.expression.predict_batch(crops, landmarks)
    input_embeddings = judges.identity.embed_batch(crops, landmarks)
    pairs = []
    for target in range(len(EXPRESSIONS)):
        chosen = [i for i, label in enumerate(labels) if label != target]
        if not chosen:
            continue
        outputs = edit_crops(generator, info, [crops[i] for i in chosen], [EXPRESSIONS[target]] * len(chosen))
        out_landmarks = landmarks[: len(chosen)]  # the generator keeps the face where the crop template put it
        probs = judges.expression.predict_batch(outputs, out_landmarks)
        cosines = cosine_similarity(input_embeddings[chosen], judges.identity.embed_batch(outputs, out_landmarks))
        pairs += [(i, target, p, float(c), change_stats(crops[i], out))
                  for i, p, c, out in zip(chosen, probs, cosines, outputs)]
    return input_probs, input_embeddings, pairs


def judge_sources(generator: Generator, info: WeightsInfo, judges: Judges, samples: Sequence[Sample],
                  batch_size: int) -> Judgements:
    """Run the judges on every source crop and on its edits towards every other expression."""
    labels = np.array([EXPRESSIONS.index(s.expression) for s in samples], dtype=np.int64)
    input_probs, embeddings, pairs = [], [], []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        probs, batch_embeddings, batch_pairs = judge_batch(generator, info, judges, read_crops(batch),
                                                           labels[start:start + batch_size])
        input_probs.append(probs)
        embeddings.append(batch_embeddings)
        pairs += [(start + i, *rest) for i, *rest in batch_pairs]
        log.info("judged %d/%d sources", min(start + batch_size, len(samples)), len(samples))
    return Judgements(
        labels=labels,
        input_probs=np.concatenate(input_probs),
        pair_source=np.array([p[0] for p in pairs], dtype=np.int64),
        pair_target=np.array([p[1] for p in pairs], dtype=np.int64),
        output_probs=np.stack([p[2] for p in pairs]).astype(np.float32),
        identity=np.array([p[3] for p in pairs], dtype=np.float32),
        change=np.array([p[4] for p in pairs], dtype=np.float32).reshape(-1, 2),
        embeddings=np.concatenate(embeddings),
        identities=tuple(s.identity for s in samples),
    )


# --- metrics ----------------------------------------------------------------------------------------------------------


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


def summarise(j: Judgements) -> dict[str, Any]:
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


# --- grid -------------------------------------------------------------------------------------------------------------


def choose_grid_samples(samples: Sequence[Sample], rows: int) -> list[Sample]:
    """Up to rows samples, one per identity first (samples come spread over expressions), then any others."""
    chosen, seen = [], set()
    for sample in samples:
        if sample.identity not in seen or sample.identity is None:
            chosen.append(sample)
            seen.add(sample.identity)
    chosen = chosen[:rows]
    return chosen + [s for s in samples if s not in chosen][: rows - len(chosen)]


def grid_image(rows: Sequence[Sequence[Frame]], titles: Sequence[str], cell: int,
               row_labels: Sequence[str] = ()) -> Frame:
    """Tile rows of equal-length image lists into one BGR image: titles above the columns, labels on column 0."""
    columns = len(titles)
    grid = np.full((GRID_HEADER + cell * len(rows), cell * columns, 3), 255, np.uint8)
    for c, title in enumerate(titles):
        cv2.putText(grid, title, (c * cell + 4, GRID_HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            tile = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA)
            grid[GRID_HEADER + r * cell:GRID_HEADER + (r + 1) * cell, c * cell:(c + 1) * cell] = tile
    for r, label in enumerate(row_labels):
        _label(grid, label, (4, GRID_HEADER + (r + 1) * cell - 6))
    return grid


def _label(image: Frame, text: str, origin: tuple[int, int]) -> None:
    """White text with a dark outline, readable on any face."""
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, thickness, cv2.LINE_AA)


def make_grid(generator: Generator, info: WeightsInfo, samples: Sequence[Sample], config: EvaluateConfig) -> Frame:
    """Rows = chosen inputs; columns = the input, then its edit towards each of the 7 expressions."""
    chosen = choose_grid_samples(samples, config.grid_rows)
    rows = []
    for sample in chosen:
        crop = read_crop(sample.path)
        rows.append([crop, *edit_crops(generator, info, [crop] * len(EXPRESSIONS), list(EXPRESSIONS))])
    labels = [f"{s.identity or ''} {s.expression}".strip() for s in chosen]
    return grid_image(rows, ("input", *EXPRESSIONS), config.grid_cell, labels)


# --- flicker ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flicker:
    """Mean absolute frame-to-frame change inside the face region, in grey levels (0-255), per video."""

    input: float
    output: float
    frames: int

    @property
    def ratio(self) -> float | None:
        """output / input: 1 means the edit added no flicker of its own."""
        return self.output / self.input if self.input > 0 else None


def _weighted_change(previous: Frame, current: Frame, mask: Mask) -> tuple[float, float]:
    """(sum of mask-weighted |current - previous| averaged over channels, sum of weights)."""
    change = np.abs(current.astype(np.float32) - previous.astype(np.float32)).mean(axis=2)
    return float((change * mask).sum()), float(mask.sum())


def flicker_index(inputs: Iterable[Frame], outputs: Iterable[Frame], masks: Iterable[Mask]) -> Flicker:
    """Flicker of an input video and its processed output over the face region; frames are streamed, not kept.

    masks[t] (H, W) in [0, 1] weights the change from frame t-1 to frame t. Sequences must have equal lengths.
    """
    totals = np.zeros(3)  # input change, output change, weight
    previous: tuple[Frame, Frame] | None = None
    frames = 0
    for frame_in, frame_out, mask in itertools.zip_longest(inputs, outputs, masks):
        if frame_in is None or frame_out is None or mask is None:
            raise ValueError("flicker_index: input, output and mask sequences differ in length")
        if frame_in.shape != frame_out.shape or mask.shape != frame_in.shape[:2]:
            raise ValueError(f"flicker_index: frame {frames}: shapes {frame_in.shape}, {frame_out.shape}, "
                             f"mask {mask.shape} differ")
        if previous is not None:
            change_in, weight = _weighted_change(previous[0], frame_in, mask)
            change_out, _ = _weighted_change(previous[1], frame_out, mask)
            totals += (change_in, change_out, weight)
        previous, frames = (frame_in, frame_out), frames + 1
    if totals[2] == 0:
        return Flicker(input=0.0, output=0.0, frames=frames)
    return Flicker(input=totals[0] / totals[2], output=totals[1] / totals[2], frames=frames)


def face_mask(shape: tuple[int, ...], faces: Sequence[Face]) -> Mask:
    """(H, W) float32 mask: 1 inside any face box."""
    mask = np.zeros(shape[:2], np.float32)
    for face in faces:
        x1, y1, x2, y2 = np.round(face.bbox).astype(int)
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    return mask


def video_frames(path: Path) -> Iterator[Frame]:
    """BGR frames of a video, upright."""
    from pipeline.video import decode_video

    return (frame.image for frame in decode_video(path))


def video_flicker(video_in: Path, video_out: Path, detector: FaceDetector) -> Flicker:
    """Flicker of a processed video against its input, over the faces detected in the input's frames."""
    inputs_a, inputs_b = itertools.tee(video_frames(video_in))
    masks = (face_mask(frame.shape, detector.detect_faces(frame)) for frame in inputs_b)
    try:
        result = flicker_index(inputs_a, video_frames(video_out), masks)
    except ValueError as error:
        raise EvaluateError(f"{video_out}: does not match {video_in}: {error}") from error
    if result.input == 0 and result.output == 0:
        raise EvaluateError(f"{video_in}: no face found in any frame; cannot measure flicker")
    return result


# --- report -----------------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def expression_table(expression: dict[str, Any]) -> list[str]:
    """Markdown table: one row per target class, then overall."""
    lines = ["| target | judge on real photos (n) | judge on unchanged inputs | judge on outputs "
             "| P(target) input → output | identity: real photos → outputs | outputs |",
             "|---|---|---|---|---|---|---|"]
    rows = [*expression["per_class"].items(), ("**overall**", expression["overall"])]
    for name, m in rows:
        lines.append(f"| {name} | {_fmt(m['real_accuracy'])} ({m['real_count']}) | {_fmt(m['baseline'])} "
                     f"| {_fmt(m['output_accuracy'])} | {_fmt(m['input_target_probability'])} → "
                     f"{_fmt(m['output_target_probability'])} | {_fmt(m.get('real_identity'))} → "
                     f"{_fmt(m.get('identity'))} | {m['count']} |")
    return lines


def change_lines(change: dict[str, Any] | None) -> list[str]:
    """report.md lines for how much the outputs differ from their inputs, and how colourful that difference is."""
    if not change:
        return []
    return ["## Change (output - input)", "",
            f"mean |change| {change['mean_abs']:.1f} grey levels; colour share {_fmt(change['colour_share'])} "
            "(its colour part, each channel minus the mean of the three, over its size: 0 = pure shading; from a "
            "neutral to an expressive 256 px TFEID photo of one performer it is 0.17; stray tints push it up)", ""]


def real_pair_lines(real_pairs: dict[str, Any] | None) -> list[str]:
    """report.md lines for the identity reference: real photos of one person in two expressions."""
    if not real_pairs or not real_pairs["count"]:
        return []
    return [f"Reference: two real photos of one person with different expressions score {_fmt(real_pairs['mean'])} "
            f"({real_pairs['count']} pairs); per target in the table below.", ""]


def generator_section(metrics: dict[str, Any]) -> list[str]:
    """report.md lines for the generator: what was evaluated, identity, the expression table and the grid."""
    w, data, identity = metrics["weights"], metrics["data"], metrics["identity"]
    return [
        f"- weights: `{w['path']}` (step {w['step']}, {w['image_size']} px, data set {w['dataset']}, "
        f"edit gain {gain_text(w['edit_gain'], w.get('expression_gains', {}))})",
        f"- data: `{data['path']}`: {data['sources']} aligned crops ({data['crop_size']} px), "
        f"identities {', '.join(data['identities']) or '–'}",
        f"- {data['outputs']} edited outputs, {metrics['timing']['ms_per_output']:.0f} ms each (edit + both judges)",
        "",
        "## Identity (ArcFace w600k_mbf cosine, input vs output)", "",
        f"mean {_fmt(identity['mean'])}, 5th percentile {_fmt(identity['p5'])}, min {_fmt(identity['min'])}", "",
        *real_pair_lines(identity.get("real_pairs")),
        *change_lines(metrics.get("change")),
        "## Expression (fer's FER2013 mini-Xception as judge)", "", *expression_table(metrics["expression"]), "",
        "Judge on real photos: its accuracy on the source crops of that class (its ceiling). Unchanged inputs: how "
        "often it already names the target on the input (the baseline to beat).", "", "![grid](grid.png)", "",
    ]


def flicker_section(flicker: dict[str, Any]) -> list[str]:
    """report.md lines for a video pair."""
    return ["## Flicker (mean |frame t - frame t-1| in the face boxes, grey levels)", "",
            f"input {flicker['input']:.2f}, output {flicker['output']:.2f}, ratio {_fmt(flicker['ratio'])} "
            f"over {flicker['frames']} frames", ""]


def report_markdown(metrics: dict[str, Any]) -> str:
    """The human-readable report.md."""
    lines = ["# Evaluation", ""]
    if "expression" in metrics:
        lines += generator_section(metrics)
    if metrics.get("flicker"):
        lines += flicker_section(metrics["flicker"])
    return "\n".join(lines)


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: identity, overall expression accuracy against its baseline, flicker."""
    lines = []
    if "expression" in metrics:
        identity, overall = metrics["identity"], metrics["expression"]["overall"]
        real = identity.get("real_pairs") or {}
        reference = f" (real photos of one person: {_fmt(real['mean'])})" if real.get("count") else ""
        lines.append(f"identity cosine: mean {_fmt(identity['mean'])}, 5th percentile {_fmt(identity['p5'])}"
                     f"{reference}")
        lines.append(f"judge on outputs {_fmt(overall['output_accuracy'])} vs unchanged inputs "
                     f"{_fmt(overall['baseline'])} (real photos {_fmt(overall['real_accuracy'])}), "
                     f"{overall['count']} outputs")
    if metrics.get("change"):
        change = metrics["change"]
        lines.append(f"change: mean |output - input| {change['mean_abs']:.1f} grey levels, "
                     f"colour share {_fmt(change['colour_share'])}")
    if metrics.get("flicker"):
        f = metrics["flicker"]
        lines.append(f"flicker: input {f['input']:.2f}, output {f['output']:.2f}, ratio {_fmt(f['ratio'])}")
    return lines


def write_report(out: Path, metrics: dict[str, Any], grid: Frame | None) -> None:
    """metrics.json, report.md and grid.png, each written atomically."""
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report_markdown(metrics)))
    if grid is not None:
        encoded = cv2.imencode(".png", grid)[1]
        atomic_write(out / "grid.png", lambda tmp: tmp.write_bytes(encoded.tobytes()))


# --- the command ------------------------------------------------------------------------------------------------------


def check_config(config: EvaluateConfig) -> None:
    """Refuse a missing GPU, and an output folder that is (or is inside) the data folder (reports among inputs)."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluateError(f"device {config.device}: CUDA is not available on this machine; use --device cpu")
    if config.data is not None:
        data, out = Path(config.data).resolve(), Path(config.out).resolve()
        if out == data or data in out.parents:
            raise EvaluateError(f"{config.out}: report folder is inside the data folder {config.data}; choose another")


def with_gains(info: WeightsInfo, config: EvaluateConfig) -> WeightsInfo:
    """info with config's edit gain (replacing all of the header's gains) and per-expression gains applied."""
    if config.edit_gain is not None:
        info = dataclasses.replace(info, edit_gain=config.edit_gain, expression_gains={})
    if config.expression_gains:
        info = dataclasses.replace(info, expression_gains={**info.expression_gains, **dict(config.expression_gains)})
    return info


def evaluate_generator(config: EvaluateConfig) -> tuple[dict[str, Any], Frame]:
    """Metrics and grid for config.weights on config.data."""
    samples = select_sources(config.data, config.identities, config.limit)
    generator, info = load_generator(config.weights, config.device)
    info = with_gains(info, config)
    judges = Judges(ExpressionJudge(), IdentityJudge())
    started = time.perf_counter()
    judgements = judge_sources(generator, info, judges, samples, config.batch_size)
    seconds = time.perf_counter() - started
    metrics = summarise(judgements)
    metrics["weights"] = {"path": str(config.weights), "step": info.step, "image_size": info.image_size,
                          "dataset": info.dataset, "edit_gain": info.edit_gain,
                          "expression_gains": dict(info.expression_gains)}
    metrics["data"] = {"path": str(config.data), "sources": len(samples), "outputs": int(judgements.pair_target.size),
                       "crop_size": int(read_crop(samples[0].path).shape[0]),
                       "identities": sorted({s.identity for s in samples if s.identity})}
    metrics["timing"] = {"seconds": seconds, "ms_per_output": 1000 * seconds / max(judgements.pair_target.size, 1)}
    return metrics, make_grid(generator, info, samples, config)


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Run the evaluation described by config and write its report; returns the metrics."""
    check_config(config)
    metrics: dict[str, Any] = {}
    grid = None
    if config.weights is not None:
        metrics, grid = evaluate_generator(config)
    if config.video_pair is not None:
        flicker = video_flicker(*config.video_pair, FaceDetector(DetectorConfig()))
        metrics["flicker"] = {"input": flicker.input, "output": flicker.output, "ratio": flicker.ratio,
                              "frames": flicker.frames}
    write_report(Path(config.out), metrics, grid)
    return metrics
