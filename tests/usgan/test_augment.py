"""usgan.augment: DiffAugment of the critic's inputs."""

from __future__ import annotations

import pytest
import torch

from usgan.augment import AugmentedCritic, cutout, diff_augment, parse_policy, translation
from usgan.config import ConfigError


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_policy_parsing() -> None:
    assert parse_policy("") == ()
    assert parse_policy(" translation , cutout") == ("translation", "cutout")
    for bad in ("blur", "cutout,cutout", "translation;cutout"):
        with pytest.raises(ConfigError, match="diff_augment"):
            parse_policy(bad)


def test_translation_shifts_each_image_by_whole_pixels_within_an_eighth() -> None:
    x = torch.rand(16, 3, 32, 32) + 1  # > 0 everywhere, so the zeros that come in show the shift
    y = translation(x, rng())
    assert y.shape == x.shape
    shifts = set()
    for a, b in zip(x, y):
        rows, cols = (b[0] > 0).any(1), (b[0] > 0).any(0)
        dy = int(rows.float().argmax()) or -(32 - int(rows.sum()))  # zero rows on top: shifted down
        dx = int(cols.float().argmax()) or -(32 - int(cols.sum()))
        assert abs(dy) <= 4 and abs(dx) <= 4
        src = a[:, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)]
        assert torch.equal(b[:, max(0, dy):32 - max(0, -dy), max(0, dx):32 - max(0, -dx)], src)
        shifts.add((dy, dx))
    assert len(shifts) > 4  # each image its own shift


def test_cutout_hides_one_square_of_half_the_side_at_most() -> None:
    x = torch.ones(32, 3, 16, 16)
    y = cutout(x, rng())
    hidden = (y[:, 0] == 0)
    assert torch.equal(hidden, (y == 0).all(1))  # all channels alike
    areas = hidden.sum((1, 2))
    assert int(areas.max()) == 64 and int(areas.min()) > 0  # an 8x8 square, clipped at the borders
    assert torch.equal(y[~hidden.unsqueeze(1).expand_as(y)], x[~hidden.unsqueeze(1).expand_as(x)])


def test_augment_is_differentiable_and_reproducible_from_the_stream() -> None:
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    policy = ("colour", "translation", "cutout")
    y = diff_augment(x, policy, rng(3))
    assert torch.equal(y, diff_augment(x, policy, rng(3)))
    assert not torch.equal(y, diff_augment(x, policy, rng(4)))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, (), rng()), x)


def test_augmented_critic_sees_the_augmented_images() -> None:
    seen = []

    def critic(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x)
        return x.mean((1, 2, 3)), x.mean((2, 3))

    x = torch.rand(4, 3, 16, 16)
    AugmentedCritic(critic, ("cutout",), rng(1))(x)
    assert torch.equal(seen[0], cutout(x, rng(1)))
