"""evaluate's outputs: the grid of edits, report.md, metrics.json and the few lines the terminal shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.evaluation.artefacts import FLAG_SHARE
from pipeline.types import Frame
from usgan.checkpoint import gain_text
from usgan.dataset import Sample
from usgan.files import atomic_write


GRID_HEADER = 22  # pixels of column titles above the grid


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


CONDITION_TITLES = {"generator": "generator alone", "warp": "warp alone", "warp+generator": "warp + generator",
                    "warp+texture": "warp + texture", "warp+texture+generator": "warp + texture + generator"}


def _cell(row: dict[str, Any]) -> str:
    return f"{_fmt(row['judge'])} / {_fmt(row['identity'])} / {_fmt(row['identity_p5'])} / {_fmt(row.get('artefacts'))}"


def conditions_table(conditions: dict[str, Any]) -> list[str]:
    """Markdown table: per target, the judge on unchanged inputs and judge / identity / its 5th percentile of each
    condition; then the mean over the key targets and all edits."""
    names = conditions["names"]
    lines = ["| target | edits | unchanged inputs: judge | "
             + " | ".join(f"{CONDITION_TITLES.get(n, n)}: judge / identity / p5 / artefacts" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    key = conditions["key_targets"]
    rows = [*conditions["per_target"].items(), (f"**mean of {', '.join(key['targets'])}**", key),
            ("**all edits**", conditions["all"])]
    for target, row in rows:
        cells = " | ".join(_cell(row[n]) for n in names)
        lines.append(f"| {target} | {row['count']} | {_fmt(row['inputs'])} | {cells} |")
    return lines


def geometry_section(metrics: dict[str, Any]) -> list[str]:
    """report.md lines for the conditions side by side and the geometry fit."""
    geometry, fit = metrics["geometry"], metrics["geometry"]["fit"]
    named = ", ".join(f"{name} {_fmt(rate)}" for name, rate in fit["named_per_class"].items() if rate is not None)
    return [
        "## Generator, warp and both (geometry model)", "",
        f"- geometry: `{geometry['path']}` (from the {geometry['source']}), warp intensity {geometry['intensity']:g}",
        f"- the fit named the source's expression for {_fmt(fit['named'])} of {fit['sources']} sources "
        f"({_fmt(fit['named_expressive'])} of the {fit['expressive']} not neutral); per class: {named}",
        f"- fit confidence 0 (the source's expression left in place): {fit['confidence_zero']} faces; "
        f"landmarks implausible (no warp): {fit['validity_zero']}; mean confidence {_fmt(fit['confidence_mean'])}",
        "", *conditions_table(metrics["conditions"]), "",
        "Judge: how often the fer judge names the target. Identity: ArcFace cosine to the source, mean / 5th "
        "percentile. The mean row averages the four targets' judge rates and pools their edits' identities. "
        f"Artefacts: the share of edits with more than {FLAG_SHARE:.0%} of the mouth's surroundings painted darker "
        "in another colour than the source (blobs at the corners, a band over the lips, a second mouth); the "
        "unchanged input scores 0.", "",
        "![warp + generator](grid_warp.png)", "",
    ]


def flicker_section(flicker: dict[str, Any]) -> list[str]:
    """report.md lines for a video pair."""
    return ["## Flicker (mean |frame t - frame t-1| in the face boxes, grey levels)", "",
            f"input {flicker['input']:.2f}, output {flicker['output']:.2f}, ratio {_fmt(flicker['ratio'])} "
            f"over {flicker['frames']} frames", ""]


def clips_section(metrics: dict[str, Any]) -> list[str]:
    """report.md lines for processed clips: flicker in the face crops and mouth motion against the input."""
    process = metrics["process"]
    lines = [f"## Video clips: process -e {process['expression']} (intensity {process['intensity']:g}, "
             f"weights `{process['weights']}`)", "",
             "| clip | frames | faces edited | flicker: input → output | ratio | mouth opening r (frames) |",
             "|---|---|---|---|---|---|"]
    for clip in metrics["clips"]:
        flicker, mouth = clip["flicker"], clip["mouth"]
        lines.append(f"| {Path(clip['clip']).name} | {clip['frames']} | {clip['faces_edited']} "
                     f"| {flicker['input']:.2f} → {flicker['output']:.2f} | {_fmt(flicker['ratio'])} "
                     f"| {_fmt(mouth['correlation'])} ({mouth['frames']}) |")
    return [*lines, "", "Flicker: mean |frame t - frame t-1| in grey levels inside the tracked faces' aligned crops "
            "(weighted by the blend mask). Mouth opening: inner-lip distance of the largest face per frame (2d106det "
            "on its aligned crop); r: Pearson correlation of output with input (talking faces keep their speech).", ""]


def report_markdown(metrics: dict[str, Any]) -> str:
    """The human-readable report.md."""
    lines = ["# Evaluation", ""]
    if "expression" in metrics:
        lines += generator_section(metrics)
    if "conditions" in metrics:
        lines += geometry_section(metrics)
    if metrics.get("flicker"):
        lines += flicker_section(metrics["flicker"])
    if "clips" in metrics:
        lines += clips_section(metrics)
    return "\n".join(lines)


def evaluation_summary_lines(metrics: dict[str, Any]) -> list[str]:
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
    if "conditions" in metrics:
        key = metrics["conditions"]["key_targets"]
        lines.append(f"mean of {', '.join(key['targets'])}: inputs {_fmt(key['inputs'])}; "
                     + "; ".join(f"{CONDITION_TITLES.get(n, n)} {_cell(key[n])}"
                                 for n in metrics["conditions"]["names"])
                     + " (judge / identity / p5 / artefacts)")
    if metrics.get("change"):
        change = metrics["change"]
        lines.append(f"change: mean |output - input| {change['mean_abs']:.1f} grey levels, "
                     f"colour share {_fmt(change['colour_share'])}")
    if metrics.get("flicker"):
        f = metrics["flicker"]
        lines.append(f"flicker: input {f['input']:.2f}, output {f['output']:.2f}, ratio {_fmt(f['ratio'])}")
    for clip in metrics.get("clips", ()):
        lines.append(f"{Path(clip['clip']).name}: flicker {clip['flicker']['input']:.2f} -> "
                     f"{clip['flicker']['output']:.2f} (ratio {_fmt(clip['flicker']['ratio'])}), mouth opening r "
                     f"{_fmt(clip['mouth']['correlation'])} over {clip['mouth']['frames']} frames")
    return lines


def write_report(out: Path, metrics: dict[str, Any], grids: dict[str, Frame] | None = None) -> None:
    """metrics.json, report.md and the grids ({file name: image}, PNG), each written atomically."""
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report_markdown(metrics)))
    for name, grid in (grids or {}).items():
        encoded = cv2.imencode(".png", grid)[1]
        atomic_write(out / name, lambda tmp: tmp.write_bytes(encoded.tobytes()))
