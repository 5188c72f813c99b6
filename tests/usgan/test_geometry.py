"""usgan.geometry: the shape model's fit on synthetic shapes, the file, and the warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usgan.expressions import EXPRESSIONS
from usgan.geometry import (
    LEFT_EYE, NOSE, POINTS, RIGHT_EYE, FitSettings, anchor_ring, build_model, face_mask, fit_expression, load_model, save_model,
    target_landmarks, warp_crops, warp_field,
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


def test_model_file_round_trips(model, tmp_path):
    model = type(model)(**{**model.__dict__, "settings": FitSettings(noise=3.0, scales={"happy": 1.5})})
    save_model(tmp_path / "shape.safetensors", model)
    loaded = load_model(tmp_path / "shape.safetensors")
    for name in ("mean", "nuisance_modes", "displacements", "speech", "style_var"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(model, name), rtol=1e-6, atol=1e-7)
    assert loaded.settings == model.settings and loaded.noise_floor == pytest.approx(model.noise_floor)


def test_loading_another_file_names_it(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(ValueError, match="other.safetensors"):
        load_model(tmp_path / "other.safetensors")


def face_points(n: int = 2) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(torch.linspace(0.3, 0.7, 10), torch.linspace(0.3, 0.8, 11), indexing="xy"), -1)
    return grid.reshape(-1, 2)[:POINTS].expand(n, -1, -1).clone()


def test_warp_without_displacement_is_the_identity():
    crops = torch.rand(2, 3, 48, 48) * 2 - 1
    points = face_points()
    assert (warp_crops(crops, points, points) - crops).abs().max() < 1e-4


def test_anchors_and_everything_outside_the_face_stay_put():
    points = face_points(1)
    moved = points + torch.tensor([0.03, -0.02])
    field = warp_field(points, moved, 64)
    outside = face_mask(64) == 0
    assert outside.any() and field[0][outside].abs().max() == 0.0
    crops = torch.rand(1, 3, 64, 64)
    out = warp_crops(crops, points, moved)
    assert torch.equal(out[0][:, outside], crops[0][:, outside])
    ring = anchor_ring()
    pixel = (ring.clamp(0, 0.999) * 64).long()
    assert field[0][pixel[:, 1], pixel[:, 0]].abs().max() < 0.01


def test_warp_moves_content_with_the_landmarks():
    crops = torch.zeros(1, 1, 64, 64)
    crops[0, 0, 30:34, 30:34] = 1.0  # a dot at (0.5, 0.5)
    source = torch.tensor([[[0.5, 0.5], [0.4, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.6]]])
    target = source + torch.tensor([[[0.06, 0.0], [0, 0], [0, 0], [0, 0], [0, 0]]])
    out = warp_crops(crops, source, target)[0, 0]
    ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
    assert abs((xs.float().mean().item() + 0.5) / 64 - 0.56) < 0.02
    assert abs((ys.float().mean().item() + 0.5) / 64 - 0.5) < 0.02


# --- the warp split for batched inference -------------------------------------------------------------------------


def smooth_image(size: int, count: int = 2) -> torch.Tensor:
    """Smooth (N, 3, size, size) images in [-1, 1]: a few low-frequency waves, so small sampling differences stay
    small in value too."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    waves = [torch.sin(6 * x + 2 * k) * torch.cos(5 * y - k) for k in range(3 * count)]
    return torch.stack(waves).reshape(count, 3, size, size)


def test_coarse_field_applied_is_warp_crops():
    from usgan.geometry import apply_field, coarse_field

    points = face_points(2).double()
    moved = points + torch.from_numpy(np.random.default_rng(0).normal(0, 0.01, (2, POINTS, 2)))
    field = coarse_field(points, moved)
    assert field.shape == (2, 32, 32, 2) and field.dtype == torch.float32
    for size in (48, 96):  # one coarse field serves every crop size
        crops = smooth_image(size)
        assert (apply_field(crops, field) - warp_crops(crops, points, moved)).abs().max() < 0.01
    assert coarse_field(points, points).abs().max() == 0.0
    crops = smooth_image(64)
    assert (apply_field(crops, torch.zeros(2, 32, 32, 2)) - crops).abs().max() < 1e-5


def test_coarse_field_is_right_after_torch_changes_its_thread_count():
    from usgan.geometry import coarse_field

    points = face_points(3).double()
    moved = points + torch.from_numpy(np.random.default_rng(1).normal(0, 0.01, (3, POINTS, 2)))
    before, threads = coarse_field(points, moved), torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # batched torch.linalg.solve gives garbage after this (MKL); numpy's does not
        torch.set_num_threads(max(2, threads))
        torch.testing.assert_close(coarse_field(points, moved), before)
    finally:
        torch.set_num_threads(threads)


def test_applied_field_leaves_everything_outside_the_face_in_place():
    from usgan.geometry import apply_field, coarse_field

    points = face_points(1).double()
    crops = torch.rand(1, 3, 64, 64)
    out = apply_field(crops, coarse_field(points, points + 0.03))
    outside = face_mask(64) == 0
    assert torch.equal(out[0][:, outside], crops[0][:, outside]) and not torch.equal(out, crops)
