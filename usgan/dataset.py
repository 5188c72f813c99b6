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
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from PIL import Image, UnidentifiedImageError

from usgan.errors import UserError
from usgan.files import atomic_write
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


# --- landmarks: FOLDER/landmarks.npz, written by build-geometry ---------------------------------------------

LANDMARKS_FILE = "landmarks.npz"


@dataclass(frozen=True)
class FolderLandmarks:
    """Landmarks of a folder's crops: paths relative to the folder, (N, 106, 2) crop units, and of the mirrors."""

    paths: tuple[str, ...]
    points: NDArray[np.float32]
    mirrored: NDArray[np.float32]

    def lookup(self, folder: Path, samples: Sequence[Sample]) -> tuple[NDArray, NDArray]:
        """The rows of samples, in their order; DataError naming the folder when one is missing."""
        row = {name: i for i, name in enumerate(self.paths)}
        names = [s.path.relative_to(Path(folder).resolve()).as_posix() for s in samples]
        missing = [n for n in names if n not in row]
        if missing:
            raise DataError(f"{folder / LANDMARKS_FILE}: no landmarks for {missing[0]} ({len(missing)} crops); "
                            "run `python cli.py build-geometry` on it")
        rows = [row[n] for n in names]
        return self.points[rows], self.mirrored[rows]


def read_landmarks(folder: Path) -> FolderLandmarks:
    """FOLDER/landmarks.npz as build-geometry writes it; DataError naming it when absent or unreadable."""
    path = Path(folder) / LANDMARKS_FILE
    try:
        with np.load(path, allow_pickle=False) as stored:
            return FolderLandmarks(tuple(str(p) for p in stored["paths"]), stored["points"], stored["mirrored"])
    except FileNotFoundError:
        raise DataError(f"{path}: no landmarks; run `python cli.py build-geometry {folder} --out MODEL` first") from None
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: not a landmarks file ({error})") from error


def write_landmarks(folder: Path, landmarks: FolderLandmarks) -> None:
    """FOLDER/landmarks.npz, atomically."""
    def save(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, paths=np.array(landmarks.paths), points=landmarks.points, mirrored=landmarks.mirrored)

    atomic_write(Path(folder) / LANDMARKS_FILE, save)
