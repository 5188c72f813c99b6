"""evaluate: how well a generator changes expressions (fer judge) and keeps identity (ArcFace), plus video flicker.

Every source crop (sources) is edited towards every other expression; its 5 landmarks are the crop template itself.
With an expression geometry model, each edit is also made by the landmark warp alone and by the warp followed by
the generator (conditions), and the three are reported side by side against the unchanged inputs.
Outputs: REPORT/metrics.json, REPORT/report.md and REPORT/grid.png (grid_warp.png with geometry), each written
atomically (report).
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

from pipeline.evaluation.conditions import (
    Editor, FittedFaces, GeometryChoice, edit_conditions, fit_faces, load_geometry, resolve_geometry,
)
from pipeline.evaluation.artefacts import artefact_shares
from pipeline.evaluation.flicker import video_flicker
from pipeline.evaluation.judges import ExpressionJudge, IdentityJudge, cosine_similarity
from pipeline.evaluation.metrics import (
    GENERATOR, WARP_GENERATOR, WARP_TEXTURE, WARP_TEXTURE_GENERATOR, ConditionJudgements, GeometryJudgements,
    Judgements, change_stats, concatenate_judgements, summarise_conditions, summarise_fit, summarise_judgements,
)
from pipeline.evaluation.report import choose_grid_samples, grid_image, write_report
from pipeline.evaluation.sources import EvaluateError, read_crop, read_crops, select_sources
from pipeline.faces.align import crop_template
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.types import Frame
from usgan.checkpoint import WeightsInfo, load_generator
from usgan.dataset import Sample
from usgan.expressions import EXPRESSIONS
from usgan.texture import load_texture

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
    refine_gains: tuple[tuple[str, float], ...] = ()  # the generator's gains on textured input, per target
    geometry: GeometryChoice = "auto"  # a geometry file, "auto" (the one the weights' header names) or "off"
    warp_intensity: float = 1.0  # scales the warp's landmark displacement (0: the warp changes nothing)
    texture: Path | None = None  # a texture file: warp + texture with and without the generator are evaluated too


@dataclass(frozen=True)
class Judges:
    expression: ExpressionJudge
    identity: IdentityJudge
    landmarks: LandmarkDetector  # for the artefact measure, on each output's own landmarks


@dataclass(frozen=True)
class TargetEdits:
    """Some sources edited towards one target: the judges' word per condition, and the generator's change."""

    judged: dict[str, ConditionJudgements]
    change: NDArray[np.float32]  # (k, 2) change_stats of the generator's outputs


def judge_edits(editor: Editor, judges: Judges, crops: Sequence[Frame], embeddings: NDArray,
                faces: FittedFaces | None, target: int, points: NDArray) -> TargetEdits:
    """The crops edited towards target under each condition, judged (identity against the sources' embeddings,
    artefacts against the crops themselves, whose landmarks are points)."""
    outputs = edit_conditions(editor, crops, [EXPRESSIONS[target]] * len(crops), faces)
    landmarks = [crop_template(crops[0].shape[0]).astype(np.float32)] * len(crops)  # the edits keep the template
    judged = {name: ConditionJudgements(judges.expression.predict_batch(images, landmarks),
                                        cosine_similarity(embeddings, judges.identity.embed_batch(images, landmarks)),
                                        artefact_shares(judges.landmarks, crops, images, points))
              for name, images in outputs.items()}
    change = np.array([change_stats(c, out) for c, out in zip(crops, outputs[GENERATOR])], np.float32)
    return TargetEdits(judged, change.reshape(-1, 2))


def joined_condition(edits: Sequence[TargetEdits], name: str) -> ConditionJudgements:
    return ConditionJudgements(*(np.concatenate([getattr(e.judged[name], field) for e in edits])
                                 for field in ("output_probs", "identity", "artefact")))


def geometry_judgements(edits: Sequence[TargetEdits], faces: FittedFaces | None) -> GeometryJudgements | None:
    """The warp's conditions and the sources' fit, when a geometry model was evaluated."""
    if faces is None:
        return None
    fit = faces.fit
    names = [name for name in edits[0].judged if name != GENERATOR]
    return GeometryJudgements({name: joined_condition(edits, name) for name in names},
                              fit_named=fit.posterior.argmax(1), fit_confidence=fit.confidence.astype(np.float32),
                              fit_validity=fit.validity.astype(np.float32))


def judge_batch(editor: Editor, judges: Judges, samples: Sequence[Sample]) -> Judgements:
    """The judges on a batch of source crops and on their edits towards every other expression, per condition."""
    crops, labels = read_crops(samples), np.array([s.label for s in samples], dtype=np.int64)
    landmarks = [crop_template(crops[0].shape[0]).astype(np.float32)] * len(crops)
    embeddings = judges.identity.embed_batch(crops, landmarks)
    faces = fit_faces(editor.geometry, crops) if editor.geometry is not None else None
    points = faces.points if faces is not None else judges.landmarks.detect(crops) / np.float32(crops[0].shape[0])
    pairs = [(np.flatnonzero(labels != target), target) for target in range(len(EXPRESSIONS))]
    pairs = [(chosen, target) for chosen, target in pairs if chosen.size]
    edits = [judge_edits(editor, judges, [crops[i] for i in chosen], embeddings[chosen],
                         faces.select(chosen) if faces is not None else None, target, points[chosen])
             for chosen, target in pairs]
    generator = joined_condition(edits, GENERATOR)
    return Judgements(labels=labels, input_probs=judges.expression.predict_batch(crops, landmarks),
                      pair_source=np.concatenate([chosen for chosen, _ in pairs]),
                      pair_target=np.concatenate([np.full(chosen.size, target) for chosen, target in pairs]),
                      output_probs=generator.output_probs, identity=generator.identity,
                      change=np.concatenate([e.change for e in edits]), embeddings=embeddings,
                      identities=tuple(s.identity for s in samples), geometry=geometry_judgements(edits, faces),
                      artefact=generator.artefact)


def judge_sources(editor: Editor, judges: Judges, samples: Sequence[Sample], batch_size: int) -> Judgements:
    """Run the judges on every source crop and on its edits towards every other expression."""
    parts = []
    for start in range(0, len(samples), batch_size):
        parts.append(judge_batch(editor, judges, samples[start:start + batch_size]))
        log.info("judged %d/%d sources", min(start + batch_size, len(samples)), len(samples))
    return concatenate_judgements(parts)


def make_grid(editor: Editor, samples: Sequence[Sample], config: EvaluateConfig,
              condition: str = GENERATOR) -> Frame:
    """Rows = chosen inputs; columns = the input, then its edit towards each of the 7 expressions."""
    chosen = choose_grid_samples(samples, config.grid_rows)
    rows = []
    for sample in chosen:
        crops = [read_crop(sample.path)] * len(EXPRESSIONS)
        faces = fit_faces(editor.geometry, crops[:1]).select([0] * len(crops)) if editor.geometry else None
        rows.append([crops[0], *edit_conditions(editor, crops, EXPRESSIONS, faces)[condition]])
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
    if config.refine_gains:
        info = dataclasses.replace(info, refine_gains={**info.refine_gains, **dict(config.refine_gains)})
    return info


def evaluate_generator(config: EvaluateConfig) -> tuple[dict[str, Any], dict[str, Frame]]:
    """Metrics and grids ({file name: image}) for config.weights on config.data."""
    samples = select_sources(config.data, config.identities, config.limit)
    generator, info = load_generator(config.weights, config.device)
    geometry_path, geometry_source = resolve_geometry(config.geometry, config.weights)
    texture = load_texture(config.texture) if config.texture is not None and geometry_path is not None else None
    geometry = load_geometry(geometry_path, config.warp_intensity, texture) if geometry_path is not None else None
    editor = Editor(generator, with_gains(info, config), geometry)
    judges = Judges(ExpressionJudge(), IdentityJudge(), LandmarkDetector())
    started = time.perf_counter()
    judgements = judge_sources(editor, judges, samples, config.batch_size)
    seconds = time.perf_counter() - started
    metrics = summarise_judgements(judgements)
    metrics["weights"] = weights_summary(config.weights, editor.info)
    metrics["data"] = {"path": str(config.data), "sources": len(samples), "outputs": int(judgements.pair_target.size),
                       "crop_size": int(read_crop(samples[0].path).shape[0]),
                       "identities": sorted({s.identity for s in samples if s.identity})}
    metrics["timing"] = {"seconds": seconds, "ms_per_output": 1000 * seconds / max(judgements.pair_target.size, 1)}
    grids = {"grid.png": make_grid(editor, samples, config)}
    if geometry is not None:
        metrics["conditions"] = summarise_conditions(judgements)
        metrics["geometry"] = {"path": str(geometry.path), "source": geometry_source, "intensity": geometry.intensity,
                               "fit": summarise_fit(judgements)}
        grids["grid_warp.png"] = make_grid(editor, samples, config, WARP_GENERATOR)
        if texture is not None:
            metrics["geometry"]["texture"] = str(config.texture)
            grids["grid_texture.png"] = make_grid(editor, samples, config, WARP_TEXTURE)
            grids["grid_texture_generator.png"] = make_grid(editor, samples, config, WARP_TEXTURE_GENERATOR)
    return metrics, grids


def weights_summary(path: Path, info: WeightsInfo) -> dict[str, Any]:
    return {"path": str(path), "step": info.step, "image_size": info.image_size, "dataset": info.dataset,
            "edit_gain": info.edit_gain, "expression_gains": dict(info.expression_gains),
            "refine_gains": dict(info.refine_gains)}


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Run the evaluation described by config and write its report; returns the metrics."""
    check_evaluate_config(config)
    metrics: dict[str, Any] = {}
    grids: dict[str, Frame] = {}
    if config.weights is not None:
        metrics, grids = evaluate_generator(config)
    if config.video_pair is not None:
        flicker = video_flicker(*config.video_pair, FaceDetector(DetectorConfig()))
        metrics["flicker"] = {"input": flicker.input, "output": flicker.output, "ratio": flicker.ratio,
                              "frames": flicker.frames}
    write_report(Path(config.out), metrics, grids)
    return metrics
