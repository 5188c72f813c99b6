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

