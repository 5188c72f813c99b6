"""evaluate: metrics from judge outputs, sample order, flicker, and the real command end to end."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from clips import write_video
from pipeline.evaluation.flicker import face_mask, flicker_index
from pipeline.evaluation.metrics import Judgements, change_stats, summarise_judgements
from pipeline.evaluation.report import GRID_HEADER, choose_grid_samples, grid_image, report_markdown
from pipeline.evaluation.sources import spread_samples
from pipeline.types import Face
from pipeline.video.decode import decode_video
from usgan.checkpoint import WeightsInfo, save_generator
from usgan.dataset import Sample
from usgan.expressions import EXPRESSIONS
from usgan.model import Generator, GeneratorConfig

ANGRY, HAPPY, NEUTRAL, SAD = (EXPRESSIONS.index(n) for n in ("angry", "happy", "neutral", "sad"))
# What report_markdown needs besides summarise_judgements' metrics (evaluate_generator adds it)
REPORT_CONTEXT = {"weights": {"path": "g.safetensors", "step": 1, "image_size": 64, "dataset": "d", "edit_gain": 1.0},
                  "data": {"path": "faces", "sources": 4, "outputs": 1, "crop_size": 64, "identities": ["a", "b"]},
                  "timing": {"seconds": 1.0, "ms_per_output": 1.0}}


def one_hot_probs(indices: list[int]) -> np.ndarray:
    probs = np.full((len(indices), 7), 0.01, np.float32)
    probs[np.arange(len(indices)), indices] = 0.94
    return probs


def test_summarise_judgements_counts_real_baseline_and_outputs():
    # Two sources: a happy one the judge gets right, a neutral one it calls happy. Three edits.
    judgements = Judgements(
        labels=np.array([HAPPY, NEUTRAL]),
        input_probs=one_hot_probs([HAPPY, HAPPY]),
        pair_source=np.array([0, 0, 1]),
        pair_target=np.array([ANGRY, NEUTRAL, HAPPY]),
        output_probs=one_hot_probs([ANGRY, HAPPY, HAPPY]),
        identity=np.array([0.9, 0.8, 0.7], np.float32),
    )
    metrics = summarise_judgements(judgements)
    per_class, overall = metrics["expression"]["per_class"], metrics["expression"]["overall"]
    assert per_class["happy"]["real_accuracy"] == 1.0 and per_class["neutral"]["real_accuracy"] == 0.0
    assert per_class["happy"]["baseline"] == 1.0 and per_class["happy"]["output_accuracy"] == 1.0
    assert per_class["angry"]["baseline"] == 0.0 and per_class["angry"]["output_accuracy"] == 1.0
    assert per_class["neutral"]["output_accuracy"] == 0.0 and per_class["neutral"]["count"] == 1
    assert per_class["sad"]["output_accuracy"] is None and per_class["sad"]["count"] == 0
    assert overall["output_accuracy"] == pytest.approx(2 / 3) and overall["baseline"] == pytest.approx(1 / 3)
    assert overall["real_accuracy"] == 0.5 and overall["output_accuracy_macro"] == pytest.approx(2 / 3)
    assert per_class["angry"]["output_target_probability"] == pytest.approx(0.94)
    assert metrics["identity"]["mean"] == pytest.approx(0.8) and metrics["identity"]["min"] == pytest.approx(0.7)
    assert 0.7 < metrics["identity"]["p5"] < 0.72
    # identity per target: which edits cost the likeness
    assert per_class["angry"]["identity"] == pytest.approx(0.9) and per_class["happy"]["identity"] == pytest.approx(0.7)
    assert per_class["sad"]["identity"] is None and overall["identity"] == pytest.approx(0.8)


def test_real_pairs_of_one_person_give_the_identity_reference_per_target():
    # Person a: a happy and a sad photo (embeddings 60 degrees apart); person b: one neutral photo; c unknown.
    angle = np.deg2rad(60)
    embeddings = np.array([[1, 0], [np.cos(angle), np.sin(angle)], [0, 1], [1, 0]], np.float32) * 3  # not unit
    judgements = Judgements(
        labels=np.array([HAPPY, SAD, NEUTRAL, SAD]),
        input_probs=one_hot_probs([HAPPY, SAD, NEUTRAL, SAD]),
        pair_source=np.array([0]), pair_target=np.array([SAD]), output_probs=one_hot_probs([SAD]),
        identity=np.array([0.9], np.float32), embeddings=embeddings, identities=("a", "a", "b", None),
    )
    metrics = summarise_judgements(judgements)
    per_class = metrics["expression"]["per_class"]
    assert metrics["identity"]["real_pairs"] == {"mean": pytest.approx(0.5), "count": 2}  # happy->sad, sad->happy
    assert per_class["sad"]["real_identity"] == pytest.approx(0.5) and per_class["happy"]["real_identity"] == 0.5
    assert per_class["neutral"]["real_identity"] is None  # b has no other photo; c's identity is unknown
    assert metrics["expression"]["overall"]["real_identity"] == pytest.approx(0.5)
    report = report_markdown({**metrics, **REPORT_CONTEXT})
    assert "different expressions score 0.50 (2 pairs)" in report and "| 0.50 → 0.90 |" in report
    without = summarise_judgements(dataclasses.replace(judgements, embeddings=None))
    assert without["identity"]["real_pairs"] == {"mean": None, "count": 0}
    assert "different expressions" not in report_markdown({**without, **REPORT_CONTEXT})


def test_change_stats_separate_shading_from_colour_and_summarise_weights_by_size():
    source = np.full((4, 4, 3), 100, np.uint8)
    darker = source - np.uint8(10)
    tinted = source + np.array([0, 0, 30], np.uint8)  # BGR: redder
    assert change_stats(source, darker) == (pytest.approx(10.0), pytest.approx(0.0))
    assert change_stats(source, tinted) == (pytest.approx(10.0), pytest.approx(40 / 3))  # |-10|, |-10|, |20|
    judgements = Judgements(
        labels=np.array([HAPPY]), input_probs=one_hot_probs([HAPPY]), pair_source=np.array([0, 0]),
        pair_target=np.array([ANGRY, NEUTRAL]), output_probs=one_hot_probs([ANGRY, HAPPY]),
        identity=np.array([0.9, 0.8], np.float32), change=np.array([[10, 0], [30, 20]], np.float32),
    )
    change = summarise_judgements(judgements)["change"]
    assert change == {"mean_abs": pytest.approx(20.0), "colour_share": pytest.approx(0.5)}


def samples_of(spec: str) -> list[Sample]:
    """'p1:happy p1:happy p2:sad' -> Samples with made-up paths."""
    return [Sample(Path(f"/d/{i}.png"), e, p) for i, (p, e) in enumerate(item.split(":") for item in spec.split())]


def test_spread_samples_covers_expressions_then_identities():
    samples = samples_of("a:happy a:happy a:happy b:happy c:happy a:sad a:sad b:sad a:angry")
    ordered = spread_samples(samples)
    assert sorted(ordered, key=lambda s: s.path) == samples
    assert [s.expression for s in ordered[:3]] == ["angry", "happy", "sad"]
    assert {s.identity for s in ordered[:5]} == {"a", "b", "c"}


def test_choose_grid_samples_prefers_new_identities():
    samples = samples_of("a:happy a:sad b:happy c:sad")
    assert [s.identity for s in choose_grid_samples(samples, 3)] == ["a", "b", "c"]
    assert len(choose_grid_samples(samples, 8)) == 4


def test_grid_image_layout():
    tile = np.full((40, 40, 3), 100, np.uint8)
    grid = grid_image([[tile] * 3, [tile] * 3], ["input", "a", "b"], cell=32, row_labels=["x", "y"])
    assert grid.shape == (GRID_HEADER + 2 * 32, 3 * 32, 3)
    assert (grid[GRID_HEADER + 2:GRID_HEADER + 10, 40:60] == 100).all()


# --- flicker ------------------------------------------------------------------------------------------------------


def flat_frames(levels: list[int], size: int = 8) -> list[np.ndarray]:
    return [np.full((size, size, 3), level, np.uint8) for level in levels]


def test_flicker_index_of_known_changes():
    mask = np.ones((8, 8), np.float32)
    result = flicker_index(flat_frames([0, 10, 10, 40]), flat_frames([0, 10, 10, 10]), itertools.repeat(mask, 4))
    assert result.input == pytest.approx(40 / 3) and result.output == pytest.approx(10 / 3)
    assert result.ratio == pytest.approx(0.25) and result.frames == 4


def test_flicker_index_only_counts_the_face_region():
    mask = np.zeros((8, 8), np.float32)
    mask[2:5, 2:5] = 1.0
    inputs = flat_frames([50, 50, 50])
    outputs = [frame.copy() for frame in inputs]
    outputs[1][0:2, :] = 255  # flicker outside the face: ignored
    outputs[2][3, 3] = 59  # one face pixel changes by 9 on one frame pair
    result = flicker_index(inputs, outputs, [mask] * 3)
    assert result.input == 0.0 and result.ratio is None
    assert result.output == pytest.approx(9 / (2 * 9))


def test_static_video_and_identical_output_have_no_flicker():
    frames = flat_frames([7, 7, 7])
    assert flicker_index(frames, frames, [np.ones((8, 8), np.float32)] * 3).output == 0.0


@pytest.mark.parametrize("outputs,masks,message", [
    (flat_frames([1, 2]), [np.ones((8, 8), np.float32)] * 3, "length"),
    (flat_frames([1, 2, 3], size=6), [np.ones((8, 8), np.float32)] * 3, "shapes"),
])
def test_flicker_index_rejects_mismatched_sequences(outputs, masks, message):
    with pytest.raises(ValueError, match=message):
        flicker_index(flat_frames([1, 2, 3]), outputs, masks)


def test_face_mask_covers_face_boxes_clipped_to_the_frame():
    face = Face(bbox=np.array([-5, 2, 4, 6], np.float32), landmarks=np.zeros((5, 2), np.float32), score=0.9)
    mask = face_mask((8, 10, 3), [face])
    assert mask.shape == (8, 10) and mask.sum() == 4 * 4 and mask[2:6, 0:4].all()


# --- end to end -----------------------------------------------------------------------------------------------------


def write_crop_set(root: Path, size: int = 64) -> None:
    """4 smooth random 'crops' of 2 identities and 2 expressions, laid out as prepare-data writes them."""
    rng = np.random.default_rng(0)
    rows = ["path,identity,expression,source"]
    for n, (identity, expression) in enumerate(itertools.product(("p1", "p2"), ("happy", "sad"))):
        image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        (root / expression).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / expression / f"{n}.png"), image)
        rows.append(f"{expression}/{n}.png,{identity},{expression},{n}.jpg")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "g.safetensors"
    save_generator(path, Generator(GeneratorConfig(conv_dim=8)), WeightsInfo(image_size=32))  # runs below crop size
    return path


def test_evaluate_command_writes_metrics_report_and_grid(tmp_path, random_weights):
    write_crop_set(tmp_path / "data")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                      "--out", str(out), "--grid-rows", "3", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"identity", "expression", "change", "weights", "data", "timing"}
    assert metrics["change"]["mean_abs"] > 0 and 0 <= metrics["change"]["colour_share"] <= 1
    assert metrics["data"]["sources"] == 4 and metrics["data"]["outputs"] == 4 * 6
    assert metrics["data"]["crop_size"] == 64 and metrics["data"]["identities"] == ["p1", "p2"]
    assert set(metrics["expression"]["per_class"]) == set(EXPRESSIONS)
    assert metrics["expression"]["per_class"]["happy"]["count"] == 2 and metrics["expression"]["overall"]["count"] == 24
    assert metrics["expression"]["per_class"]["happy"]["real_count"] == 2
    assert -1.0 <= metrics["identity"]["p5"] <= metrics["identity"]["mean"] < 1.0
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape == (GRID_HEADER + 3 * 128, 8 * 128, 3)
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in EXPRESSIONS) and "**overall**" in report
    assert "## Change" in report and "colour share" in report
    assert "identity cosine" in result.output and "colour share" in result.output


def test_evaluate_filters_identities_and_takes_an_edit_gain(tmp_path, random_weights):
    write_crop_set(tmp_path / "data")
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                      "--out", str(tmp_path / "r"), "--identities", "p2", "--grid-rows", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["data"]["identities"] == ["p2"] and metrics["weights"]["edit_gain"] == 1.0
    halved = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                      "--out", str(tmp_path / "h"), "--identities", "p2", "--grid-rows", "1",
                                      "--edit-gain", "0.5"])
    assert halved.exit_code == 0, halved.output
    half = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert half["weights"]["edit_gain"] == 0.5 and "edit gain 0.5" in (tmp_path / "h" / "report.md").read_text()
    assert 0.4 < half["change"]["mean_abs"] / metrics["change"]["mean_abs"] < 0.6
    per_target = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data",
                                          str(tmp_path / "data"), "--out", str(tmp_path / "e"), "--identities", "p2",
                                          "--grid-rows", "1", "--edit-gain", "0.5", "--expression-gain", "HAS=1"])
    assert per_target.exit_code == 0, per_target.output
    gained = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert gained["weights"]["expression_gains"] == {"happy": 1.0}
    assert "edit gain 0.5, happy 1" in (tmp_path / "e" / "report.md").read_text()
    assert gained["change"]["mean_abs"] > half["change"]["mean_abs"]
    bad = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                   "--out", str(tmp_path / "b"), "--expression-gain", "happy"])
    assert bad.exit_code != 0 and "expected EXPRESSION=GAIN" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("args,code,message", [
    (["--weights", "{w}"], 2, "--weights and --data go together"),
    ([], 2, "give --weights and --data, or --video-pair"),
    (["--weights", "{w}", "--data", "{d}", "--identities", "nobody"], 1, "identities not in the data: nobody"),
])
def test_evaluate_bad_usage_is_one_line(tmp_path, random_weights, args, code, message):
    write_crop_set(tmp_path / "data")
    args = [a.format(w=random_weights, d=tmp_path / "data") for a in args]
    result = CliRunner().invoke(cli, ["evaluate", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_evaluate_without_cuda_is_one_line(tmp_path, random_weights):
    write_crop_set(tmp_path / "data")
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                      "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert result.exit_code == 1 and "CUDA is not available" in result.output


def test_evaluate_refuses_a_report_inside_the_data(tmp_path, random_weights):
    write_crop_set(tmp_path / "data")
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "data"),
                                      "--out", str(tmp_path / "data" / "report")])
    assert result.exit_code == 1 and "inside the data folder" in result.output


def test_video_pair_flicker_rises_with_per_frame_noise(shared_dir, tmp_path):
    frames = [f.image for f in itertools.islice(decode_video(shared_dir / "media/video/d18.mp4"), 6)]
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(int) + rng.integers(-30, 31, f.shape), 0, 255).astype(np.uint8) for f in frames]
    write_video(tmp_path / "in.mp4", frames)
    write_video(tmp_path / "out.mp4", noisy)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--video-pair", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    flicker = json.loads((out / "metrics.json").read_text())["flicker"]
    assert flicker["frames"] == 6 and flicker["ratio"] > 1.5
    assert "Flicker" in (out / "report.md").read_text() and not (out / "grid.png").exists()
