"""evaluate: how well a generator changes expressions (fer judge) and keeps identity (ArcFace), plus video flicker.

Every source crop (sources) is edited towards every other expression; its 5 landmarks are the crop template itself.
Outputs: REPORT/metrics.json, REPORT/report.md and REPORT/grid.png, each written atomically (report).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.evaluation.flicker import video_flicker
from pipeline.evaluation.judges import ExpressionJudge, IdentityJudge, cosine_similarity
from pipeline.evaluation.metrics import Judgements, change_stats, summarise_judgements
from pipeline.evaluation.report import choose_grid_samples, grid_image, write_report
from pipeline.evaluation.sources import EvaluateError, edit_crops, read_crop, read_crops, select_sources
from pipeline.faces.align import crop_template
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.types import Frame
from usgan.checkpoint import WeightsInfo, load_generator
from usgan.dataset import Sample
from usgan.expressions import EXPRESSIONS
from usgan.model import Generator

log = logging.getLogger(__name__)


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
class Judges:
    expression: ExpressionJudge
    identity: IdentityJudge


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


def make_grid(generator: Generator, info: WeightsInfo, samples: Sequence[Sample], config: EvaluateConfig) -> Frame:
    """Rows = chosen inputs; columns = the input, then its edit towards each of the 7 expressions."""
    chosen = choose_grid_samples(samples, config.grid_rows)
    rows = []
    for sample in chosen:
        crop = read_crop(sample.path)
        rows.append([crop, *edit_crops(generator, info, [crop] * len(EXPRESSIONS), list(EXPRESSIONS))])
    labels = [f"{s.identity or ''} {s.expression}".strip() for s in chosen]
    return grid_image(rows, ("input", *EXPRESSIONS), config.grid_cell, labels)


def check_evaluate_config(config: EvaluateConfig) -> None:
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
    metrics = summarise_judgements(judgements)
    metrics["weights"] = {"path": str(config.weights), "step": info.step, "image_size": info.image_size,
                          "dataset": info.dataset, "edit_gain": info.edit_gain,
                          "expression_gains": dict(info.expression_gains)}
    metrics["data"] = {"path": str(config.data), "sources": len(samples), "outputs": int(judgements.pair_target.size),
                       "crop_size": int(read_crop(samples[0].path).shape[0]),
                       "identities": sorted({s.identity for s in samples if s.identity})}
    metrics["timing"] = {"seconds": seconds, "ms_per_output": 1000 * seconds / max(judgements.pair_target.size, 1)}
    return metrics, make_grid(generator, info, samples, config)


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Run the evaluation described by config and write its report; returns the metrics."""
    check_evaluate_config(config)
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
