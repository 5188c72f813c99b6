"""pipeline.geometry in the processing path: --geometry's resolution and errors, per-face warp fields on a real
photo (the real detector and landmark net) with tiny shape models built here, the fallback and its count, the
per-track landmark smoothing, and video and convert runs with geometry on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from clips import make_clip, naming_weights, portrait, psnr, with_geometry
from pipeline.batch import convert_dir, summary_lines
from pipeline.config import parse_edit
from pipeline.edit import load_models
from pipeline.faces.align import align_face, select_faces
from pipeline.faces.tracking import TrackerConfig
from pipeline.geometry import LandmarkSmoother, blended_targets, landmarks_found, resolve_geometry, warp_fields
from pipeline.process import process_image, process_result_line, process_video
from usgan.expressions import EXPRESSIONS
from usgan.geometry import MOUTH_CORNERS, GeometryError, ShapeModel, fit_expression, load_model, target_landmarks
from usgan.tps import FIELD_GRID

HAPPY, SAD = EXPRESSIONS.index("happy"), EXPRESSIONS.index("sad")


# ---------------------------------------------------------------- --geometry


def test_auto_uses_the_file_the_weights_name_beside_them_and_off_and_paths_are_taken_as_given(weights, tmp_path):
    named = naming_weights(weights["random"], tmp_path / "g.safetensors", "shape.safetensors")
    assert resolve_geometry("auto", named) == tmp_path / "shape.safetensors"
    assert resolve_geometry("auto", weights["random"]) is None  # the header names none: no warp
    assert resolve_geometry("auto", tmp_path / "missing.safetensors") is None  # the generator's loader reports it
    assert resolve_geometry("off", named) is None
    assert resolve_geometry(str(tmp_path / "x.safetensors"), named) == tmp_path / "x.safetensors"


def test_parse_edit_reads_the_shape_model_once(weights, shape_models, tmp_path):
    named = naming_weights(weights["random"], shape_models["face"].parent / "named.safetensors", "face.safetensors")
    assert isinstance(parse_edit(with_geometry(named, "auto")).geometry, ShapeModel)
    assert isinstance(parse_edit(with_geometry(weights["random"], shape_models["face"])).geometry, ShapeModel)
    assert parse_edit(with_geometry(named, "off")).geometry is None
    assert parse_edit(with_geometry(weights["random"], "auto")).geometry is None


@pytest.mark.parametrize("make, message", [
    (lambda path, weights: path, "no such geometry file"),
    (lambda path, weights: path.write_text("not a model") and path, "not a readable geometry file"),
    (lambda path, weights: path.write_bytes(weights.read_bytes()) and path, "not a usgan-geometry file"),
])
def test_a_missing_or_invalid_geometry_file_is_one_line_naming_it(weights, tmp_path, make, message):
    path = make(tmp_path / "shape.safetensors", weights["random"])
    with pytest.raises(GeometryError, match=message) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_names_a_bad_geometry_file_in_one_line(weights, tmp_path):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), portrait())
    named = naming_weights(weights["random"], tmp_path / "named.safetensors", "gone.safetensors")
    for option in (tmp_path / "gone.safetensors", "auto"):
        result = CliRunner().invoke(cli, ["process", str(photo), "-e", "happy", "--weights", str(named),
                                          "--geometry", str(option), "-o", str(tmp_path / "o.png")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and lines == [f"error: {tmp_path / 'gone.safetensors'}: no such geometry file "
                                                   "(build one with `python cli.py build-geometry`)"]
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- fields


@pytest.fixture(scope="module")
def aligned(weights, shape_models):
    """The portrait's aligned crop, and the warp's models for the 'face' shape model."""
    models = load_models(with_geometry(weights["random"], shape_models["face"]))
    face = select_faces(models.finder.image_faces(portrait()), "largest")[0]
    return align_face(portrait(), face, 256), models.geometry


def one_hot(*indices: int) -> np.ndarray:
    return np.eye(len(EXPRESSIONS), dtype=np.float32)[list(indices)]


def test_fields_follow_the_target_and_its_intensity(aligned):
    crop, geometry = aligned
    fields, failed = warp_fields(geometry, [crop] * 3, one_hot(HAPPY, HAPPY, HAPPY), np.array([1.0, 0.5, 0.0]),
                                 [0.0] * 3)
    assert fields.shape == (3, FIELD_GRID, FIELD_GRID, 2) and fields.dtype == np.float32 and not failed.any()
    assert np.abs(fields[0]).max() > 0.01  # happy moves the mouth corners by ~0.03 crop units
    # The displacement scales with intensity (the field, sampled at the target's positions, nearly so).
    assert np.abs(fields[1] - fields[0] / 2).max() < 0.15 * np.abs(fields[0]).max()
    assert np.abs(fields[2]).max() < 1e-6


def test_a_mix_warps_towards_the_blend_of_its_targets(aligned):
    crop, geometry = aligned
    points = geometry.landmarks.detect([crop.image]).astype(np.float64) / 256
    fit = fit_expression(geometry.model, points)
    mix = np.array([[0.25 if k == HAPPY else 0.75 if k == SAD else 0.0 for k in range(len(EXPRESSIONS))]])
    blend = blended_targets(geometry.model, points, mix, np.ones(1), fit)
    happy, sad = (target_landmarks(geometry.model, points, [name], fit=fit) for name in ("happy", "sad"))
    np.testing.assert_allclose(blend, 0.25 * happy + 0.75 * sad, atol=1e-12)
    corners = blend[0, list(MOUTH_CORNERS), 0]
    assert abs(corners[1] - corners[0]) < abs(happy[0, 61, 0] - happy[0, 52, 0])  # narrower than a full smile


def test_landmarks_that_fail_give_a_zero_field_and_are_counted(aligned):
    crop, geometry = aligned
    blank = replace(crop, image=np.full_like(crop.image, 128))  # no face: the net's points make no face shape
    fields, failed = warp_fields(geometry, [crop, blank], one_hot(HAPPY, HAPPY), np.ones(2), [0.0] * 2)
    assert failed.tolist() == [False, True]
    assert np.abs(fields[0]).max() > 0.01 and not fields[1].any()
    points = np.full((3, 106, 2), 0.5)
    points[1, 7] = np.nan
    points[2, 7] = [1.6, 0.5]  # far outside the crop
    assert landmarks_found(points).tolist() == [True, False, False]


# ---------------------------------------------------------------- smoothing


def test_smoothing_reduces_landmark_jitter_per_track():
    rng = np.random.default_rng(0)
    times = np.arange(50) / 25.0
    truth = np.linspace(0.3, 0.7, 106 * 2).reshape(106, 2)
    raw = truth + rng.normal(0, 0.004, (50, 2, 106, 2))  # two faces, each jittering around its own shape
    raw[:, 1] += 0.1
    smoother = LandmarkSmoother(TrackerConfig())
    found = np.ones(2, bool)
    smoothed = np.stack([smoother.smooth(raw[n], found, [3, 7], [t, t]) for n, t in enumerate(times)])
    jitter = lambda points: np.abs(np.diff(points[10:], axis=0)).mean()  # noqa: E731 - frame-to-frame motion
    assert jitter(smoothed) < 0.5 * jitter(raw)
    assert np.abs(smoothed[10:, 1] - truth - 0.1).mean() < 0.5 * np.abs(raw[10:, 1] - truth - 0.1).mean()
    assert np.abs(smoothed[:, 0].mean(0) - truth).max() < 0.01  # tracks do not mix
    off = LandmarkSmoother(TrackerConfig(smooth=False))
    np.testing.assert_array_equal(off.smooth(raw[1], found, [3, 7], [0.0, 0.0]), raw[1])


def test_failed_and_untracked_landmarks_pass_unsmoothed():
    smoother = LandmarkSmoother(TrackerConfig())
    first, second = np.zeros((2, 106, 2)), np.ones((2, 106, 2))
    smoother.smooth(first, np.ones(2, bool), [0, -1], [0.0, 0.0])
    out = smoother.smooth(second, np.array([False, True]), [0, -1], [0.04, 0.04])
    np.testing.assert_array_equal(out, second)


# ---------------------------------------------------------------- runs


def test_a_photo_with_geometry_differs_from_without_only_inside_the_face(weights, shape_models, tmp_path):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), portrait())
    on = process_image(photo, tmp_path / "on.png", with_geometry(weights["random"], shape_models["face"]))
    off = process_image(photo, tmp_path / "off.png", with_geometry(weights["random"], "off"))
    assert (on.faces_edited, on.faces_without_geometry, off.faces_without_geometry) == (1, 0, None)
    a, b = cv2.imread(str(tmp_path / "on.png")), cv2.imread(str(tmp_path / "off.png"))
    assert a.shape == b.shape == portrait().shape
    changed = np.abs(a.astype(int) - b.astype(int)).max(2) > 2
    box = select_faces(load_models(with_geometry(weights["random"], "off")).finder.image_faces(portrait()),
                       "largest")[0].bbox
    x1, y1, x2, y2 = box
    assert changed[int(y1):int(y2), int(x1):int(x2)].sum() > 100
    changed[int(y1):int(y2), int(x1):int(x2)] = False
    assert not changed.any()  # nothing outside the face box moves
    assert "0 faces without geometry (generator alone)" in process_result_line(on)


def test_a_face_the_shape_model_cannot_fit_gets_the_generator_alone_and_is_counted(weights, shape_models, tmp_path):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), portrait())
    result = process_image(photo, tmp_path / "on.png", with_geometry(weights["random"], shape_models["upside"]))
    process_image(photo, tmp_path / "off.png", with_geometry(weights["random"], "off"))
    assert (result.faces_edited, result.faces_without_geometry) == (1, 1)
    assert "1 faces without geometry (generator alone)" in process_result_line(result)
    assert psnr(cv2.imread(str(tmp_path / "on.png")), cv2.imread(str(tmp_path / "off.png"))) > 45


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_video_with_geometry_runs_its_geometry_stage(weights, shape_models, tmp_path, backend):
    clip = make_clip(tmp_path / "in.mp4", frames=6, audio=False)
    config = with_geometry(weights["random"], shape_models["face"])
    config = replace(config, synthesizer=replace(config.synthesizer, backend=backend,
                                                 onnx=replace(config.synthesizer.onnx, preference="cpu",
                                                              cache_dir=str(tmp_path / "onnx"))))
    result = process_video(clip, tmp_path / "out.mp4", config)
    assert (result.frames, result.faces_edited, result.faces_without_geometry) == (6, 6, 0)
    assert "geometry" in result.stage_seconds and (tmp_path / "out.mp4").stat().st_size > 0


def test_convert_counts_faces_without_geometry_in_its_summary(weights, shape_models, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / "in" / f"{name}.png"), portrait())
    summary = convert_dir(tmp_path / "in", tmp_path / "out", with_geometry(weights["random"], shape_models["upside"]))
    assert summary.geometry and summary.without_geometry == 2
    assert summary_lines(summary)[1] == "2 faces without geometry (generator alone)"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [entry["without_geometry"] for entry in manifest["files"].values()] == [1, 1]
    off = convert_dir(tmp_path / "in", tmp_path / "off", with_geometry(weights["random"], "off"))
    assert not off.geometry and len(summary_lines(off)) == 1


def test_a_video_keeps_a_smile_s_mouth_opening_where_a_still_gives_it_up():
    """The mean smile (its mouth open) towards neutral with the shipped model: a still closes the mouth by most of
    the smile's opening; a video frame (talking) keeps the whole opening as speech."""
    from usgan.geometry import LOWER_LIP, UPPER_INNER_LIP

    model = load_model(Path(__file__).resolve().parents[2] / "weights" / "geometry.safetensors")
    smile = model.displacements[EXPRESSIONS.index("happy")].reshape(-1, 2)
    happy = model.mean.reshape(1, -1, 2) + smile
    fit = fit_expression(model, happy)
    neutral = np.eye(len(EXPRESSIONS))[[EXPRESSIONS.index("neutral")]]

    def opening(points: np.ndarray) -> float:
        return float(points[list(LOWER_LIP), 1].mean() - points[list(UPPER_INNER_LIP), 1].mean())

    video, still = (blended_targets(model, happy, neutral, np.ones(1), fit, talking=t)[0] for t in (True, False))
    assert opening(smile) > 0.01 and fit.posterior[0, EXPRESSIONS.index("happy")] > 0.5
    assert opening(video) == pytest.approx(opening(happy[0]), abs=1e-6)
    assert opening(still) < opening(happy[0]) - 0.6 * opening(smile)


def test_a_video_smile_adds_no_mouth_opening_of_its_own():
    """The mean neutral face towards happy: a still opens the mouth by the smile's opening; a video frame's opening
    stays the speaker's (the smile moves the corners). The corners move up and out in both."""
    from usgan.geometry import LOWER_LIP, MOUTH_CORNERS, UPPER_INNER_LIP

    model = load_model(Path(__file__).resolve().parents[2] / "weights" / "geometry.safetensors")
    smile = model.displacements[EXPRESSIONS.index("happy")].reshape(-1, 2)
    neutral = model.mean.reshape(1, -1, 2)
    fit = fit_expression(model, neutral)
    happy = np.eye(len(EXPRESSIONS))[[EXPRESSIONS.index("happy")]]

    def opening(points: np.ndarray) -> float:
        return float(points[list(LOWER_LIP), 1].mean() - points[list(UPPER_INNER_LIP), 1].mean())

    video, still = (blended_targets(model, neutral, happy, np.ones(1), fit, talking=t)[0] for t in (True, False))
    assert opening(video) == pytest.approx(opening(neutral[0]), abs=1e-6)
    assert opening(still) > opening(neutral[0]) + 0.8 * opening(smile)
    corners = list(MOUTH_CORNERS)
    np.testing.assert_allclose(video[corners, 0] - neutral[0, corners, 0], still[corners, 0] - neutral[0, corners, 0])
    assert np.abs(video[corners] - neutral[0, corners]).max() > 0.005
