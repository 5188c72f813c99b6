"""Fixtures of the product-pipeline tests (helpers live in clips.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clips import save_weights


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, Path]:
    """{'random': ..., 'identity': ...} tiny generator files at 32 px."""
    folder = tmp_path_factory.mktemp("weights")
    return {name: save_weights(folder / f"{name}.safetensors", name == "identity") for name in ("random", "identity")}



@pytest.fixture(scope="session")
def shape_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny expression geometry files: 'face' built around the portrait's own landmarks (its face fits), 'upside'
    around them turned upside down (the portrait's landmarks are implausible there: the warp must give up)."""
    from clips import portrait_landmarks, save_shape_model

    folder = tmp_path_factory.mktemp("geometry")
    centre = portrait_landmarks()
    upside = centre * [1.0, -1.0] + [0.0, 1.0]
    return {"face": save_shape_model(folder / "face.safetensors", centre),
            "upside": save_shape_model(folder / "upside.safetensors", upside)}
