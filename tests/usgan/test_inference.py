"""apply_generator: the generator's residual at its own size, added to crops of any size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from usgan.checkpoint import WeightsInfo
from usgan.expressions import expression_index, one_hot
from usgan.inference import apply_generator, edit_gains, target_vectors
from usgan.model import Generator, GeneratorConfig


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(conv_dim=8)).eval()


def crops(size: int, count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(size)) * 1.6 - 0.8


def test_same_size_is_the_generator_output(generator):
    x = crops(32)
    got = apply_generator(generator, WeightsInfo(image_size=32), x, ["happy", "sad"])
    c = torch.stack([torch.from_numpy(one_hot("happy")), torch.from_numpy(one_hot("sad"))])
    with torch.no_grad():
        expected = generator(x, c).clamp(-1, 1)
    torch.testing.assert_close(got, expected)


def upsampled_edit(generator: Generator, x: torch.Tensor, target: str, intensity: float) -> torch.Tensor:
    """The documented recipe, spelled out: residual at 32, bilinear up to the crop, scaled, added, clamped."""
    small = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    c = torch.from_numpy(one_hot(target)).expand(x.shape[0], -1)
    with torch.no_grad():
        residual = F.interpolate(generator(small, c) - small, size=x.shape[2:], mode="bilinear", align_corners=False)
    return (x + intensity * residual).clamp(-1, 1)


@pytest.mark.parametrize("intensity", [1.0, 0.5, 0.0])
def test_larger_crops_get_the_upsampled_scaled_residual(generator, intensity):
    x = crops(64)
    got = apply_generator(generator, WeightsInfo(image_size=32), x, ["angry", "angry"], intensity=intensity)
    torch.testing.assert_close(got, upsampled_edit(generator, x, "angry", intensity), atol=1e-5, rtol=1e-5)
    if intensity == 0.0:
        torch.testing.assert_close(got, x)


def test_edit_gain_multiplies_the_residual_with_the_intensity(generator):
    x = crops(64)
    got = apply_generator(generator, WeightsInfo(image_size=32, edit_gain=2.0), x, ["sad", "sad"], intensity=0.25)
    torch.testing.assert_close(got, upsampled_edit(generator, x, "sad", 0.5), atol=1e-5, rtol=1e-5)


def test_expression_gains_scale_each_crop_by_its_targets_gain(generator):
    x = crops(64)
    info = WeightsInfo(image_size=32, edit_gain=0.5, expression_gains={"happy": 2.0})
    got = apply_generator(generator, info, x, ["happy", "sad"])
    torch.testing.assert_close(got[:1], upsampled_edit(generator, x[:1], "happy", 2.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1:], upsampled_edit(generator, x[1:], "sad", 0.5), atol=1e-5, rtol=1e-5)


def test_a_mixed_target_gets_the_weighted_mean_of_its_expressions_gains():
    info = WeightsInfo(edit_gain=1.0, expression_gains={"happy": 2.0})
    mixed = torch.zeros(3, 7)
    mixed[0, [expression_index("happy"), expression_index("sad")]] = 0.5
    mixed[1, expression_index("happy")] = 3.0  # unnormalised: the weights, not their sum, decide
    torch.testing.assert_close(edit_gains(info, mixed), torch.tensor([1.5, 2.0, 1.0]))  # all-zero: edit_gain


def test_targets_are_checked():
    with pytest.raises(ValueError, match="2 expressions"):
        target_vectors(["happy"], 2)
    assert target_vectors(["SUS", "joy"], 2).argmax(1).tolist() == [6, 3]


def test_a_zero_warp_field_is_the_generator_alone_and_a_field_moves_the_crop(generator):
    x, info = crops(64), WeightsInfo(image_size=32)
    targets = target_vectors(["happy", "sad"], 2)
    plain = apply_generator(generator, info, x, targets)
    zero = apply_generator(generator, info, x, targets, fields=torch.zeros(2, 32, 32, 2))
    assert (zero - plain).abs().max() < 1e-4
    shift = torch.full((2, 32, 32, 2), 0.02)  # everything inside the face mask moves by 0.02 crop units
    moved = apply_generator(generator, info, x, targets, intensity=0.0, fields=shift)
    assert (moved - x).abs().max() > 0.1 and torch.equal(moved[:, :, :2], x[:, :, :2])  # the top rows stay


def test_refine_gains_apply_only_to_textured_input():
    info = WeightsInfo(edit_gain=1.1, expression_gains={"happy": 1.25}, refine_gains={"happy": 0.5, "sad": 0.0})
    targets = torch.eye(7)[[3, 5, 0]]  # happy, sad, angry
    assert edit_gains(info, targets).tolist() == pytest.approx([1.25, 1.1, 1.1])
    assert edit_gains(info, targets, refine=True).tolist() == pytest.approx([0.5, 0.0, 1.1])


def test_a_negative_refine_gain_is_refused():
    from usgan.config import ConfigError

    with pytest.raises(ConfigError, match="refine_gains.sad"):
        WeightsInfo(refine_gains={"sad": -1.0})


def test_refine_gains_of_zero_skip_the_generator(monkeypatch):
    generator = Generator(GeneratorConfig(conv_dim=8)).eval()
    info = WeightsInfo(image_size=16, refine_gains={name: 0.0 for name in ("happy", "sad")})
    crops = torch.rand(2, 3, 32, 32) * 2 - 1

    def refuse(*args):
        raise AssertionError("the generator ran")

    monkeypatch.setattr(generator, "residual", refuse)
    out = apply_generator(generator, info, crops, ["happy", "sad"], refine=True)
    torch.testing.assert_close(out, crops)
    with pytest.raises(AssertionError, match="the generator ran"):
        apply_generator(generator, info, crops, ["happy", "sad"])  # plain crops: the gains above apply
