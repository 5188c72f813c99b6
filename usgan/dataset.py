"""The aligned-crop folder format that `prepare-data` writes and training and `evaluate` read.

ROOT/<expression>/*.png|jpg. Folder names may be canonical names, the paper's codes (ANS, DIS, ...) or aliases. An
optional ROOT/index.csv (columns path,identity,expression,source; path relative to ROOT) names each image's identity;
otherwise TFEID-style file names (PPTVxNN, PP = performer) give it, else the identity is unknown.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS, Expression, UnknownExpressionError, parse_expression

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("path", "identity", "expression", "source")
# TFEID: 2-digit performer, performance type, view point, expression letter, 2-digit serial (e.g. 0111b01).
TFEID_NAME = re.compile(r"^(\d{2})\d{2}[a-g]\d{2}$")


class DataError(UserError):
    """A data directory that does not have the expected layout; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One aligned face crop; path is absolute, identity None when unknown."""

    path: Path
    expression: Expression
    identity: str | None

    @property
    def label(self) -> int:
        return EXPRESSIONS.index(self.expression)


def identity_from_filename(path: Path) -> str | None:
    """The TFEID performer ('01' for 0111b01.jpg), or None for other names."""
    match = TFEID_NAME.match(path.stem)
    return match.group(1) if match else None


def read_index(root: Path) -> dict[Path, str]:
    """Identity per image path from ROOT/index.csv, or {} when there is none."""
    index = root / INDEX_NAME
    if not index.is_file():
        return {}
    try:
        with index.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{index}: cannot read ({error})") from error
    if rows and not {"path", "identity"} <= set(rows[0]):
        raise DataError(f"{index}: expected columns {','.join(INDEX_COLUMNS)}, got {','.join(rows[0])}")
    return {(root / row["path"]).resolve(): row["identity"].strip() for row in rows if row["identity"]}


def check_image(path: Path) -> None:
    """Read only the header, so a broken file fails here with its name rather than deep in a loader worker."""
    try:
        with Image.open(path) as image:
            image.size
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error


def folder_expression(folder: Path) -> Expression:
    try:
        return parse_expression(folder.name)
    except UnknownExpressionError as error:
        raise DataError(f"{folder}: folder name is not an expression ({error})") from error


def scan_dataset(root: Path) -> list[Sample]:
    """All images under ROOT/<expression>/, sorted, with identities from index.csv or TFEID file names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist")
    identities = read_index(root)
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        expression = folder_expression(folder)
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            check_image(path)
            identity = identities.get(path.resolve()) or identity_from_filename(path)
            samples.append(Sample(path.resolve(), expression, identity))
    if not samples:
        raise DataError(f"{root}: no images found; expected ROOT/<expression>/*.png|jpg (e.g. ROOT/happy/001.png)")
    return samples


def parse_identities(text: str) -> tuple[str, ...]:
    """'16, 17,30' -> ('16', '17', '30'): a comma-separated list of performer identities, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
