"""usgan.geometry: the shape model's fit on synthetic shapes, the file, and the warp."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from usgan.expressions import EXPRESSIONS
from usgan.geometry import (
    LEFT_BROW, LEFT_EYE, NOSE, POINTS, RIGHT_BROW, RIGHT_EYE, FitSettings, GeometryError, build_model, fit_expression,
    inner_brow_weights, load_model, save_model, target_landmarks,
)

HAPPY, NEUTRAL = EXPRESSIONS.index("happy"), EXPRESSIONS.index("neutral")


def synthetic(seed: int = 0, people: int = 40):
    """Landmarks of people (random shapes around one face) showing each expression with known displacements."""
    rng = np.random.default_rng(0)  # one world: the face, its identity modes and expressions
    mean = np.stack([rng.uniform(0.25, 0.75, POINTS), rng.uniform(0.3, 0.85, POINTS)], 1)
    mean[list(LEFT_EYE)] = rng.normal([0.35, 0.42], 0.01, (len(LEFT_EYE), 2))
    mean[list(RIGHT_EYE)] = rng.normal([0.65, 0.42], 0.01, (len(RIGHT_EYE), 2))
    mean[list(NOSE)] = np.stack([rng.normal(0.5, 0.02, len(NOSE)), np.linspace(0.42, 0.62, len(NOSE))], 1)
    identity = rng.normal(0, 0.01, (4, POINTS, 2))
    truth = rng.normal(0, 0.012, (len(EXPRESSIONS), POINTS, 2))
    truth[:, list(NOSE + LEFT_EYE + RIGHT_EYE)] = 0.0  # expressions move the mouth and brows, not the nose
    truth[NEUTRAL] = 0.0
    points, labels, groups = [], [], []
    rng = np.random.default_rng(seed + 1)  # the people
    for person in range(people):
        shape = mean + np.tensordot(rng.normal(0, 1, 4), identity, 1)
        for k in range(len(EXPRESSIONS)):
            points.append(shape + truth[k] * rng.uniform(0.8, 1.2) + rng.normal(0, 5e-4, (POINTS, 2)))
            labels.append(k)
            groups.append(str(person))
    return np.array(points), np.array(labels), groups, truth


@pytest.fixture(scope="module")
def model():
    points, labels, groups, _ = synthetic()
    model = build_model(points, labels, groups, nuisance=4, style=2)
    # Synthetic shapes are far tidier than real landmarks: scale the confidence range to them.
    return type(model)(**{**model.__dict__, "settings": FitSettings(conf_low=1.5, conf_high=2.5, keep_opening=False)})


def test_model_recovers_the_mean_displacements():
    points, labels, groups, truth = synthetic()
    model = build_model(points, labels, groups, nuisance=4, style=2)
    # Shapes are compared after a similarity on the stable points, so allow a small rotation/scale residue.
    found = model.displacements.reshape(truth.shape)
    assert np.abs(found - truth).mean() < 0.1 * np.abs(truth).mean()


def test_fit_names_and_recovers_a_known_expression_component(model):
    points, labels, _, truth = synthetic(seed=1, people=3)
    fit = fit_expression(model, points)
    assert (fit.posterior.argmax(1) == labels).mean() > 0.9
    happy = labels == HAPPY
    error = np.abs(fit.component[happy] - truth[HAPPY]).mean()
    assert error < 0.25 * np.abs(truth[HAPPY]).mean()
    neutral = labels == NEUTRAL
    assert np.abs(fit.component[neutral]).mean() < 0.2 * np.abs(truth[HAPPY]).mean()


def test_target_replaces_the_source_expression_instead_of_stacking(model):
    points, labels, _, truth = synthetic(seed=2, people=2)
    happy, neutral = points[labels == HAPPY], points[labels == NEUTRAL]
    as_neutral = target_landmarks(model, happy, ["neutral"] * len(happy))
    assert np.abs(as_neutral - neutral).mean() < 0.3 * np.abs(happy - neutral).mean()
    again = target_landmarks(model, happy, ["happy"] * len(happy))
    assert np.abs(again - happy).mean() < 0.3 * np.abs(truth[HAPPY]).mean()  # not twice the smile
    np.testing.assert_allclose(target_landmarks(model, happy, ["sad"] * len(happy), intensity=0.0), happy)


def test_component_is_bounded_and_implausible_shapes_are_left_alone(model):
    points, labels, _, truth = synthetic(seed=3, people=1)
    huge = points[labels == NEUTRAL] + 6 * truth[HAPPY]
    fit = fit_expression(model, huge, FitSettings(bound=1.5, conf_low=1e6, conf_high=2e6))
    assert np.linalg.norm(fit.component) <= 1.5 * np.linalg.norm(model.displacements[HAPPY]) + 1e-9
    wild = points[:1] + np.random.default_rng(0).normal(0, 0.2, (1, POINTS, 2))
    assert fit_expression(model, wild).confidence[0] == 0.0
    np.testing.assert_allclose(target_landmarks(model, wild, ["happy"]), wild)


def test_removal_keeps_the_mouth_opening(model):
    from usgan.geometry import LOWER_LIP, UPPER_INNER_LIP, speech_kept

    component = np.random.default_rng(4).normal(0, 0.01, (2, POINTS, 2))
    kept = speech_kept(model, component)
    opening = kept[:, list(LOWER_LIP), 1] - kept[:, list(UPPER_INNER_LIP), 1].mean(1, keepdims=True)
    np.testing.assert_allclose(opening, 0.0, atol=1e-12)  # lips move together: the opening is the source's
    np.testing.assert_array_equal(kept[:, :, 0], component[:, :, 0])


def test_inner_brow_weights_are_full_at_the_inner_ends_and_none_at_the_outer():
    mean = np.full((POINTS, 2), 0.5)
    mean[list(NOSE), 0] = 0.5
    mean[list(LEFT_BROW), 0] = np.linspace(0.45, 0.2, len(LEFT_BROW))   # inner end first
    mean[list(RIGHT_BROW), 0] = np.linspace(0.8, 0.55, len(RIGHT_BROW))  # outer end first
    weights = inner_brow_weights(mean)
    left, right = weights[list(LEFT_BROW)], weights[list(RIGHT_BROW)]
    assert left[0] == right[-1] == 1.0 and left[-1] == right[0] == 0.0
    assert np.all(np.diff(left) <= 0) and np.all(np.diff(right) >= 0)
    np.testing.assert_allclose(left, right[::-1])
    assert not np.delete(weights, list(LEFT_BROW + RIGHT_BROW)).any()


def test_inner_brows_scale_only_the_target_s_vertical_move_of_the_inner_brows(model):
    points, labels, _, _ = synthetic(seed=5, people=1)
    neutral = points[labels == NEUTRAL].repeat(2, 0)
    targets = ["sad", "angry"]

    def goal(**inner_brows):
        return target_landmarks(model, neutral, targets, settings=replace(model.settings, inner_brows=inner_brows))

    base, kept, flat, raised = goal(), goal(sad=1.0), goal(sad=0.0), goal(sad=-1.0)
    np.testing.assert_array_equal(kept, base)
    np.testing.assert_allclose(flat[1], base[1])  # angry, in the same batch, is untouched
    moved = np.abs(flat[0] - base[0]).sum(1) > 1e-12
    brows = inner_brow_weights(model.mean.reshape(POINTS, 2)) > 0
    assert moved.any() and not (moved & ~brows).any()
    np.testing.assert_allclose(raised - base, 2.0 * (flat - base), atol=1e-12)  # -1: the move reversed


def test_model_file_round_trips(model, tmp_path):
    model = type(model)(**{**model.__dict__, "settings": FitSettings(noise=3.0, scales={"happy": 1.5},
                                                                         inner_brows={"sad": -1.5})})
    save_model(tmp_path / "shape.safetensors", model)
    loaded = load_model(tmp_path / "shape.safetensors")
    for name in ("mean", "nuisance_modes", "displacements", "speech", "style_var"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(model, name), rtol=1e-6, atol=1e-7)
    assert loaded.settings == model.settings and loaded.noise_floor == pytest.approx(model.noise_floor)


@pytest.mark.parametrize("name, value, message", [
    ("scales", {"angry": "x"}, "scales.angry must be a number, got 'x'"),
    ("scales", {"angry": float("nan")}, "scales.angry must be a number, got nan"),
    ("inner_brows", [1, 2], r"inner_brows must be a mapping, got \[1, 2\]"),
    ("noise", "abc", "noise must be a number, got 'abc'"),
    ("keep_opening", 1, "keep_opening must be true or false, got 1"),
    ("smoothing", 2, "unknown key[(]s[)] smoothing"),
])
def test_a_hand_edited_setting_is_one_line_at_load(model, tmp_path, name, value, message):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    save_model(tmp_path / "shape.safetensors", model)
    with safe_open(str(tmp_path / "shape.safetensors"), "np") as handle:
        header = handle.metadata()
    settings = {**json.loads(header["settings"]), name: value}
    save_file(load_file(str(tmp_path / "shape.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={**header, "settings": json.dumps(settings)})
    with pytest.raises(GeometryError, match=f"bad.safetensors: not a readable geometry file [(]settings: {message}"):
        load_model(tmp_path / "bad.safetensors")


def test_loading_another_file_names_it(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(GeometryError, match="other.safetensors: not a usgan-geometry file"):
        load_model(tmp_path / "other.safetensors")


def test_a_smile_or_a_gasp_takes_its_mouth_opening_with_it(model):
    """Speech is kept only in the share of the face that is not happy or surprised: a laughing source's opening is
    removed with its smile, a neutral talking face's is kept."""
    from usgan.geometry import LOWER_LIP, UPPER_INNER_LIP, speech_kept

    component = np.random.default_rng(5).normal(0, 0.01, (3, POINTS, 2))
    posterior = np.zeros((3, len(EXPRESSIONS)))
    posterior[0, EXPRESSIONS.index("neutral")] = 1.0
    posterior[1, EXPRESSIONS.index("happy")] = 1.0
    posterior[2, [EXPRESSIONS.index("surprised"), EXPRESSIONS.index("neutral")]] = 0.5
    kept = speech_kept(model, component, posterior)
    np.testing.assert_allclose(kept[0], speech_kept(model, component[:1])[0])
    np.testing.assert_allclose(kept[1], component[1])
    opening = kept[:, list(LOWER_LIP), 1] - kept[:, list(UPPER_INNER_LIP), 1].mean(1, keepdims=True)
    full = component[2, list(LOWER_LIP), 1] - component[2, list(UPPER_INNER_LIP), 1].mean()
    np.testing.assert_allclose(opening[2], 0.5 * full, atol=1e-12)


def test_pair_error_of_a_model_is_well_under_leaving_the_source_unchanged(model):
    from pipeline.evaluation.geometry_build import pair_error

    points, labels, groups, _ = synthetic(seed=2, people=3)
    checked = pair_error(model, points, labels, groups)
    assert checked.pairs == 3 * 7 * 6
    assert checked.predicted < 0.5 * checked.unchanged
    assert pair_error(model, points[:1], labels[:1], groups[:1]).pairs == 0


@pytest.mark.parametrize("name, value, message", [
    ("mean", np.zeros(210, np.float32), r"array mean has shape \(210,\), expected \(212,\)"),
    ("style_var", np.zeros(5, np.float32), r"array style_var has shape \(5,\), expected \('M',\)"),
    ("speech", np.full(212, np.nan, np.float32), "array speech contains NaN"),
])
def test_a_damaged_geometry_file_is_one_line_naming_the_array(model, tmp_path, name, value, message):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    save_model(tmp_path / "shape.safetensors", model)
    with safe_open(str(tmp_path / "shape.safetensors"), "np") as handle:
        header = handle.metadata()
    save_file({**load_file(str(tmp_path / "shape.safetensors")), name: value}, str(tmp_path / "bad.safetensors"),
              metadata=header)
    with pytest.raises(GeometryError, match=message):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(GeometryError, match=r": a folder, not a geometry file"):
        load_model(tmp_path)
