"""evaluate with an expression geometry model: the generator, the warp and both side by side, on real face crops."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from clips import portrait
from pipeline.evaluation.conditions import header_geometry, resolve_geometry
from pipeline.evaluation.metrics import (
    GENERATOR, WARP, WARP_GENERATOR, ConditionJudgements, GeometryJudgements, Judgements, concatenate_judgements,
    summarise_conditions, summarise_fit,
)
from pipeline.evaluation.report import report_markdown
from pipeline.evaluation.sources import EvaluateError
from pipeline.faces.align import align_face, select_faces
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.faces.landmarks import LandmarkDetector
from usgan.checkpoint import WeightsInfo, generator_metadata, save_generator, save_tensors
from usgan.expressions import EXPRESSIONS
from usgan.geometry import POINTS, build_model, save_model
from usgan.model import Generator, GeneratorConfig

ANGRY, HAPPY, NEUTRAL, SAD, SURPRISED = (EXPRESSIONS.index(n) for n in ("angry", "happy", "neutral", "sad", "surprised"))
CROP = 128
BROWS = list(range(43, 52)) + list(range(97, 106))
LOWER_LIP = [53, 54, 55, 56, 57, 58, 59, 60]


def one_hot(indices: list[int]) -> np.ndarray:
    probs = np.full((len(indices), 7), 0.01, np.float32)
    probs[np.arange(len(indices)), indices] = 0.94
    return probs


def judgements_with_geometry() -> Judgements:
    """Two sources (happy, neutral); the neutral one edited to angry, happy, sad and surprised, the happy one to sad."""
    targets = [ANGRY, HAPPY, SAD, SURPRISED, SAD]
    warp = ConditionJudgements(one_hot([NEUTRAL, HAPPY, NEUTRAL, NEUTRAL, SAD]),
                               np.array([0.9, 0.9, 0.9, 0.9, 0.5], np.float32))
    both = ConditionJudgements(one_hot(targets), np.linspace(0.6, 0.8, 5).astype(np.float32))
    return Judgements(
        labels=np.array([HAPPY, NEUTRAL]), input_probs=one_hot([HAPPY, NEUTRAL]),
        pair_source=np.array([1, 1, 1, 1, 0]), pair_target=np.array(targets),
        output_probs=one_hot([ANGRY, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL]),
        identity=np.array([0.8, 0.8, 0.8, 0.8, 0.4], np.float32),
        geometry=GeometryJudgements({WARP: warp, WARP_GENERATOR: both}, fit_named=np.array([NEUTRAL, NEUTRAL]),
                                    fit_confidence=np.array([0.0, 1.0], np.float32),
                                    fit_validity=np.array([1.0, 1.0], np.float32)),
    )


def test_conditions_side_by_side_per_target_and_over_the_key_targets():
    conditions = summarise_conditions(judgements_with_geometry())
    assert conditions["names"] == [GENERATOR, WARP, WARP_GENERATOR]
    sad, happy = conditions["per_target"]["sad"], conditions["per_target"]["happy"]
    assert sad["count"] == 2 and sad["inputs"] == 0.0 and happy["inputs"] == 0.0
    assert sad[GENERATOR]["judge"] == 0.0 and sad[WARP]["judge"] == 0.5 and sad[WARP_GENERATOR]["judge"] == 1.0
    assert sad[WARP]["identity"] == pytest.approx(0.7) and 0.5 < sad[WARP]["identity_p5"] < 0.55
    assert happy[WARP]["judge"] == 1.0 and conditions["per_target"]["neutral"][GENERATOR]["judge"] is None
    key = conditions["key_targets"]
    # judge: the mean of the four targets' rates (angry 1, happy 0, sad 0, surprised 0), not of the five edits
    assert key["count"] == 5 and key[GENERATOR]["judge"] == pytest.approx(0.25)
    assert key[WARP]["judge"] == pytest.approx((0 + 1 + 0.5 + 0) / 4) and key[WARP_GENERATOR]["judge"] == 1.0
    assert key[GENERATOR]["identity"] == pytest.approx(0.72)  # pooled over the five edits
    assert conditions["all"][GENERATOR]["judge"] == pytest.approx(0.2)
    fit = summarise_fit(judgements_with_geometry())
    assert fit["named"] == 0.5 and fit["named_expressive"] == 0.0 and fit["expressive"] == 1
    assert fit["named_per_class"]["neutral"] == 1.0 and fit["named_per_class"]["sad"] is None
    assert fit["confidence_zero"] == 1 and fit["validity_zero"] == 0


def test_concatenated_batches_keep_pairs_on_their_sources():
    part = judgements_with_geometry()
    joined = concatenate_judgements([part, part])
    assert joined.pair_source.tolist() == [1, 1, 1, 1, 0, 3, 3, 3, 3, 2]
    assert joined.geometry.conditions[WARP].identity.shape == (10,) and joined.geometry.fit_named.shape == (4,)
    sad, once = (summarise_conditions(j)["per_target"]["sad"][WARP] for j in (joined, part))
    assert sad["judge"] == once["judge"] and sad["identity"] == pytest.approx(once["identity"])


def test_geometry_comes_from_the_option_or_the_weights_header(tmp_path):
    torch.manual_seed(0)
    plain = tmp_path / "plain.safetensors"
    save_generator(plain, Generator(GeneratorConfig(conv_dim=8)), WeightsInfo(image_size=32))
    assert header_geometry(plain) is None and resolve_geometry("auto", plain) == (None, "none")
    named = tmp_path / "w" / "named.safetensors"
    named.parent.mkdir()
    tensors = {k: v for k, v in Generator(GeneratorConfig(conv_dim=8)).state_dict().items()}
    save_tensors(named, tensors, {**generator_metadata(WeightsInfo(image_size=32)), "geometry": "geo.safetensors"})
    assert header_geometry(named) == named.parent / "geo.safetensors"
    with pytest.raises(EvaluateError, match="names the geometry file .*geo.safetensors, which is missing"):
        resolve_geometry("auto", named)
    (named.parent / "geo.safetensors").write_bytes(b"")
    assert resolve_geometry("auto", named) == (named.parent / "geo.safetensors", "weights header")
    assert resolve_geometry("off", named) == (None, "none")
    assert resolve_geometry(tmp_path / "g.safetensors", named) == (tmp_path / "g.safetensors", "option")


# --- end to end on real face crops ------------------------------------------------------------------------------


def face_crops() -> list[np.ndarray]:
    """Four aligned crops of the portrait: as is, mirrored, brighter, darker and mirrored."""
    image = portrait()
    face = select_faces(FaceDetector(DetectorConfig()).detect_faces(image), "largest")[0]
    crop = align_face(image, face, CROP).image
    return [crop, crop[:, ::-1].copy(), cv2.convertScaleAbs(crop, alpha=1.1, beta=10),
            cv2.convertScaleAbs(crop[:, ::-1].copy(), alpha=0.9)]


def write_face_set(root: Path, crops: list[np.ndarray]) -> None:
    """The crops as prepare-data writes them: two people, each happy and sad."""
    rows = ["path,identity,expression,source"]
    for n, (crop, identity, expression) in enumerate(zip(crops, ("p1", "p1", "p2", "p2"), ("happy", "sad") * 2)):
        (root / expression).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / expression / f"{n}.png"), crop)
        rows.append(f"{expression}/{n}.png,{identity},{expression},{n}.jpg")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


def expression_shifts() -> np.ndarray:
    """(7, 106, 2) made-up expression displacements in crop units: smiles, frowns, brows and an open mouth."""
    shift = np.zeros((len(EXPRESSIONS), POINTS, 2))
    shift[HAPPY, [52, 61]] = [[-0.02, -0.02], [0.02, -0.02]]
    shift[SAD, [52, 61], 1], shift[SAD, BROWS, 1] = 0.02, -0.01
    shift[ANGRY, BROWS, 1] = 0.015
    shift[SURPRISED, LOWER_LIP, 1], shift[SURPRISED, BROWS, 1] = 0.04, -0.02
    return shift


def write_geometry(path: Path, crops: list[np.ndarray]) -> Path:
    """A shape model of 24 made-up people around the crops' own landmarks, showing each expression."""
    faces = LandmarkDetector(threads=1).detect(crops) / CROP
    rng, shift = np.random.default_rng(0), expression_shifts()
    points, labels, groups = [], [], []
    for person in range(24):
        base = faces[person % len(faces)] + rng.normal(0, 0.004, (POINTS, 2))
        for k in range(len(EXPRESSIONS)):
            points.append(base + shift[k] * rng.uniform(0.8, 1.2) + rng.normal(0, 0.001, (POINTS, 2)))
            labels.append(k)
            groups.append(str(person))
    save_model(path, build_model(np.array(points), np.array(labels), groups, nuisance=4, style=2))
    return path


@pytest.fixture(scope="module")
def face_set(tmp_path_factory) -> tuple[Path, Path]:
    """(a prepare-data folder of real face crops, a geometry model file for them)."""
    root = tmp_path_factory.mktemp("faces")
    crops = face_crops()
    write_face_set(root / "data", crops)
    return root / "data", write_geometry(root / "geometry.safetensors", crops)


def run_evaluate(weights: Path, data: Path, out: Path, *options: str) -> dict:
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(weights), "--data", str(data), "--out", str(out),
                                      "--grid-rows", "2", *options])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_reports_generator_warp_and_both(tmp_path, face_set, weights):
    data, geometry = face_set
    metrics = run_evaluate(weights["random"], data, tmp_path / "r", "--geometry", str(geometry))
    conditions, per_class = metrics["conditions"], metrics["expression"]["per_class"]
    assert conditions["names"] == [GENERATOR, WARP, WARP_GENERATOR]
    for target, row in conditions["per_target"].items():  # the generator's column is evaluate's own numbers
        assert row["count"] == per_class[target]["count"] and row["inputs"] == per_class[target]["baseline"]
        assert row[GENERATOR]["judge"] == per_class[target]["output_accuracy"]
        assert row[GENERATOR]["identity"] == pytest.approx(per_class[target]["identity"])
    happy = conditions["per_target"]["happy"]
    assert happy["count"] == 2 and happy[WARP]["identity"] < 0.9999  # the warp moved the faces
    assert happy[WARP]["identity_p5"] <= happy[WARP]["identity"] and happy[WARP_GENERATOR]["identity"] > 0
    assert conditions["key_targets"]["targets"] == ["angry", "happy", "sad", "surprised"]
    fit = metrics["geometry"]["fit"]
    assert metrics["geometry"]["source"] == "option" and fit["sources"] == 4 and fit["expressive"] == 4
    assert fit["confidence_zero"] == 0 and fit["validity_zero"] == 0
    assert (tmp_path / "r" / "grid_warp.png").is_file() and (tmp_path / "r" / "grid.png").is_file()
    report = (tmp_path / "r" / "report.md").read_text()
    assert "warp + generator: judge / identity / p5" in report and "**mean of angry, happy, sad, surprised**" in report
    assert "named the source's expression" in report and report == report_markdown(metrics)


def test_warp_at_zero_intensity_leaves_the_inputs(tmp_path, face_set, weights):
    data, geometry = face_set
    conditions = run_evaluate(weights["random"], data, tmp_path / "r", "--geometry", str(geometry),
                              "--warp-intensity", "0")["conditions"]
    for row in (*conditions["per_target"].values(), conditions["all"]):
        assert row[WARP]["judge"] == row["inputs"]
        assert row[WARP]["identity"] == pytest.approx(1.0, abs=1e-4)
        assert row[WARP_GENERATOR]["judge"] == row[GENERATOR]["judge"]
        assert row[WARP_GENERATOR]["identity"] == pytest.approx(row[GENERATOR]["identity"], abs=1e-3)


def test_geometry_off_and_bad_geometry_files(tmp_path, face_set, weights):
    data, _ = face_set
    plain = run_evaluate(weights["random"], data, tmp_path / "off", "--geometry", "off")
    assert "conditions" not in plain and "geometry" not in plain and not (tmp_path / "off" / "grid_warp.png").exists()
    (tmp_path / "bad.safetensors").write_text("not a model")
    for path, message in ((tmp_path / "none.safetensors", "no such geometry file"),
                          (tmp_path / "bad.safetensors", "not a readable geometry file"),
                          (weights["random"], "not a usgan-geometry file")):
        result = CliRunner().invoke(cli, ["evaluate", "--weights", str(weights["random"]), "--data", str(data),
                                          "--out", str(tmp_path / "r"), "--geometry", str(path)])
        assert result.exit_code == 1 and f"{path}: {message}" in result.output and "Traceback" not in result.output
    alone = CliRunner().invoke(cli, ["evaluate", "--video-pair", str(path), str(path), "--out", str(tmp_path / "v"),
                                     "--geometry", "off"])
    assert alone.exit_code == 2 and "--geometry goes with --weights and --data" in alone.output
