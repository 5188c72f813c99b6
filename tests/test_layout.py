"""The tree keeps its shape: no module over 300 lines (cli.py at most 400), a short model card, and the library
(usgan/, pipeline/) never imports click: the options live beside cli.py."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"cli.py": 400}


def test_no_module_is_over_its_size():
    ignored = {".venv", ".git", "build", "runs", "data"}
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text().splitlines())
             for path in REPO.rglob("*.py") if not ignored & set(path.relative_to(REPO).parts)}
    assert {name: lines for name, lines in sizes.items() if lines > LIMITS.get(name, 300)} == {}


def test_the_model_card_is_short():
    assert len((REPO / "weights" / "MODEL_CARD.md").read_text().splitlines()) <= 200


def test_the_library_never_imports_click():
    pattern = re.compile(r"^\s*(import click|from click\b)", re.M)
    library = [path for folder in ("usgan", "pipeline") for path in (REPO / folder).rglob("*.py")]
    assert [str(path) for path in library if pattern.search(path.read_text())] == []
