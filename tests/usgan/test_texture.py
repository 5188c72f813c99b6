"""usgan.texture: the texture model's file, its per-face weights and the texture step of the graph."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from usgan.expressions import EXPRESSIONS
from usgan.geometry import load_model
from usgan.texture import (
    INNER_LIP, SIZE, TextureError, TextureLayer, TextureModel, face_weights, load_texture, mouth_opening,
    polygon_mask, save_texture,
)
from usgan.tps import coarse_field

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "weights" / "texture.safetensors"
HAPPY, SAD, SURPRISED = (EXPRESSIONS.index(n) for n in ("happy", "sad", "surprised"))


def canonical_shape() -> np.ndarray:
    model = load_model(REPO / "weights" / "geometry.safetensors")
    return (model.mean + model.displacements[SURPRISED]).reshape(-1, 2).astype(np.float32)


def tiny_model(size: int = 32, ratio: float = 0.0) -> TextureModel:
    """A texture with one uniform log ratio for sad and a white donor mouth for happy."""
    count = len(EXPRESSIONS)
    log_ratio = np.zeros((count, size, size), np.float32)
    log_ratio[SAD] = ratio
    mouth, alpha = np.zeros((count, 3, size, size), np.float32), np.zeros((count, size, size), np.float32)
    canonical = canonical_shape()
    mouth[HAPPY] = 1.0
    alpha[HAPPY] = polygon_mask(canonical, INNER_LIP, size)
    ring_colour = np.full((count, 3), 0.5, np.float32)
    return TextureModel(canonical, log_ratio, mouth, alpha, np.ones((size, size), np.float32), ring_colour,
                        gains={"sad": 1.0})


def one_hot(*indices: int) -> np.ndarray:
    return np.eye(len(EXPRESSIONS), dtype=np.float32)[list(indices)]


def test_the_file_round_trips_with_its_header(tmp_path: Path):
    model = tiny_model(ratio=-0.2)
    save_texture(tmp_path / "t.safetensors", model)
    loaded = load_texture(tmp_path / "t.safetensors")
    np.testing.assert_allclose(loaded.log_ratio, model.log_ratio, atol=1e-3)  # stored in fp16
    assert loaded.gains == {"sad": 1.0} and loaded.gain_of("happy") == 1.0


@pytest.mark.parametrize("damage, message", [
    (lambda m: replace(m, ring_colour=np.zeros((3, 3), np.float32)),
     "array ring_colour has shape (3, 3), expected (7, 3)"),
    (lambda m: replace(m, log_ratio=m.log_ratio * np.nan),
     "array log_ratio contains NaN or infinite values; the file is damaged"),
])
def test_a_damaged_file_is_refused_with_one_line_naming_it(tmp_path: Path, damage, message: str):
    path = tmp_path / "bad.safetensors"
    save_texture(path, damage(tiny_model()))
    with pytest.raises(TextureError, match=f"^{path}: {message.replace('(', '[(]').replace(')', '[)]')}$"):
        load_texture(path)


@pytest.mark.parametrize("gains, message", [
    ('{"sad": "strong"}', "gains.sad must be at least 0, got 'strong'"),
    ('{"sad": NaN}', "gains.sad must be at least 0, got nan"),
    ('{"sad": -1}', "gains.sad must be at least 0, got -1"),
    ('{"joy": 1}', "gains: unknown expression 'joy'"),
    ('[1, 2]', r"gains must be a mapping expression -> number, got \[1, 2\]"),
])
def test_a_hand_edited_gain_is_one_line_at_load(tmp_path: Path, gains: str, message: str):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    save_texture(tmp_path / "t.safetensors", tiny_model())
    with safe_open(str(tmp_path / "t.safetensors"), "np") as handle:
        header = handle.metadata()
    save_file(load_file(str(tmp_path / "t.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={**header, "gains": gains})
    with pytest.raises(TextureError, match=f"bad.safetensors: not a readable texture file [(]{message}") as caught:
        load_texture(tmp_path / "bad.safetensors")
    assert "\n" not in str(caught.value)


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path):
    with pytest.raises(TextureError, match="no such texture file"):
        load_texture(tmp_path / "none.safetensors")
    with pytest.raises(TextureError, match="not a usgan-texture file"):
        load_texture(REPO / "weights" / "geometry.safetensors")


def test_the_shipped_file_loads_and_shades_every_expression_but_neutral():
    model = load_texture(SHIPPED)
    shaded = np.abs(model.log_ratio).max((1, 2)) > 0.05
    assert shaded.tolist() == [name != "neutral" for name in EXPRESSIONS]
    assert (model.alpha.max((1, 2)) > 0.5).tolist() == [name in ("happy", "surprised") for name in EXPRESSIONS]
    assert model.sources["held_out"]  # built without the evaluation people


def field_to(goal: np.ndarray, model: TextureModel) -> torch.Tensor:
    canonical = np.broadcast_to(model.canonical, goal.shape).astype(np.float64)
    return coarse_field(torch.from_numpy(canonical), torch.from_numpy(goal.astype(np.float64)))


def test_zero_weights_give_back_the_crops():
    model = tiny_model(ratio=-0.3)
    crops = torch.rand(2, 3, 48, 48) * 2 - 1
    zeros = torch.zeros(2, len(EXPRESSIONS))
    out, small = TextureLayer(model)(crops, crops[..., ::2, ::2], field_to(np.stack([model.canonical] * 2), model),
                                     zeros, zeros)
    torch.testing.assert_close(out, crops, atol=1e-5, rtol=0)
    torch.testing.assert_close(small, crops[..., ::2, ::2], atol=1e-5, rtol=0)


def test_the_ratio_scales_the_face_by_its_weight():
    model = tiny_model(ratio=-0.2)
    crops = torch.zeros(1, 3, 64, 64)  # mid grey: 0.5
    ratio = torch.from_numpy(one_hot(SAD) * 0.5)
    out = TextureLayer(model)(crops, crops, field_to(model.canonical[None], model), ratio, torch.zeros(1, 7))[0]
    expected = 0.5 * np.exp(-0.1) * 2 - 1
    assert abs(float(out[0, 0, 32, 32]) - expected) < 1e-4


def test_the_donor_mouth_fills_only_the_target_inner_lip():
    model = tiny_model()
    goal = model.canonical[None].astype(np.float64)
    crops = torch.full((1, 3, 64, 64), -0.6)
    out = TextureLayer(model)(crops, crops, field_to(goal, model), torch.zeros(1, 7),
                              torch.from_numpy(one_hot(HAPPY)))[0]
    inside = polygon_mask(goal[0], INNER_LIP, 64) > 0.99
    changed = (out - crops).abs().amax(1)[0].numpy() > 0.1
    assert changed[inside].all() and not changed[polygon_mask(goal[0], INNER_LIP, 64, dilate=3) < 0.01].any()
    assert float(out[0, :, inside].mean()) > 0.3  # the teeth-white donor stays light on a dark face


def test_weights_remove_the_source_expression_and_fill_only_a_new_opening():
    model = replace(tiny_model(), gains={"sad": 2.0})
    closed, open_ = np.array([0.0, 0.3]), np.array([0.3, 0.3])
    ratio, mouth = face_weights(model, one_hot(SAD, HAPPY), np.ones(2), one_hot(HAPPY, HAPPY), np.ones(2),
                                closed, open_)
    assert ratio[0, SAD] == 2.0 and ratio[0, HAPPY] == -1.0  # the source's smile out, the target's sadness in
    assert ratio[1, HAPPY] == 0.0  # a smiling face asked to smile keeps its own texture
    assert mouth[0].sum() == 0.0 and mouth[1].sum() == 0.0  # sad brings no mouth; an open smile keeps its own
    _, mouth = face_weights(model, one_hot(HAPPY), np.full(1, 0.5), one_hot(EXPRESSIONS.index("neutral")),
                            np.ones(1), np.zeros(1), np.full(1, 0.3))
    assert mouth[0, HAPPY] == 0.5


def test_mouth_opening_is_zero_for_closed_lips_and_grows_with_the_gap():
    shape = canonical_shape()[None].astype(np.float64)
    closed = shape.copy()
    closed[0, list(INNER_LIP), 1] = shape[0, list(INNER_LIP), 1].mean()
    assert mouth_opening(closed)[0] < 0.01 < mouth_opening(shape)[0]


def test_polygon_mask_covers_the_polygon():
    square = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    mask = polygon_mask(square, (0, 1, 2, 3), SIZE)
    assert abs(mask.mean() - 0.25) < 0.02


def test_an_implausible_face_gets_no_texture_of_its_target():
    model = tiny_model()
    ratio, mouth = face_weights(model, one_hot(SAD, HAPPY), np.ones(2), one_hot(4, 4), np.zeros(2), np.zeros(2),
                                np.full(2, 0.3), validity=np.array([0.0, 0.5]))
    assert ratio[0].sum() == 0.0 and mouth[0].sum() == 0.0
    assert mouth[1, HAPPY] == 0.5
