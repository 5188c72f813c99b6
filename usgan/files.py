"""File helpers shared by training, the weights files and the product pipeline."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) and rename the result to path, so no half-written file is ever left at path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # name the output the user asked for, not the temp file
        raise OSError(error.errno, error.strerror, str(path)) from error
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary user files
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename != tmp and error.filename != Path(tmp):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safetensors_write(save: Callable[..., object], tensors: dict[str, Any], tmp: Path, metadata: dict[str, str]) -> None:
    """save(tensors, tmp, metadata=...) (safetensors' torch or numpy save_file), its I/O errors as OSError: safetensors
    reports a full disk as its own SafetensorError."""
    try:
        save(tensors, str(tmp), metadata=metadata)
    except Exception as error:  # noqa: BLE001 - SafetensorError, or a Rust panic's exception
        code = re.search(r"os error (\d+)", str(error))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path atomically, checking that every byte reached the file before the rename (a nearly full
    disk can take part of a write without an error)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
        if tmp.stat().st_size != len(data):
            raise OSError(errno.ENOSPC, f"wrote {tmp.stat().st_size} of {len(data)} bytes")
    atomic_write(path, write)


@contextlib.contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """Create path (and missing parents) for a run; when the run fails, remove the folders it created that are
    still empty, so that a failure leaves nothing behind."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        inside = [Path(root) for root, _, _ in os.walk(path, topdown=False)] if missing else []
        for folder in inside + missing[1:]:  # deepest first; only what this run created
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_arrays(arrays: dict[str, Any], shapes: dict[str, tuple[str | int, ...]], path: Path,
                 error: type[Exception]) -> None:
    """Raise error naming the file and the array when one is missing, of the wrong shape or not finite. shapes: the
    expected arrays; a letter in a shape is a count that must agree wherever it appears."""
    import numpy as np

    if set(arrays) != set(shapes):
        raise error(f"{path}: holds arrays {', '.join(sorted(arrays))}; expected {', '.join(shapes)}")
    counts: dict[str, int] = {}
    for name, shape in shapes.items():
        actual = arrays[name].shape
        if len(actual) != len(shape) or not all(counts.setdefault(want, got) == got if isinstance(want, str)
                                                else want == got for want, got in zip(shape, actual)):
            raise error(f"{path}: array {name} has shape {actual}, expected {shape}")
        if not np.isfinite(arrays[name]).all():
            raise error(f"{path}: array {name} contains NaN or infinite values; the file is damaged")


def read_model_file(path: str | Path, model_format: str, kind: str, command: str,
                    error: type[Exception]) -> tuple[dict[str, str], dict[str, Any]]:
    """The JSON header and numpy arrays of one of our model files (a safetensors file whose header names its format
    and the expressions in order); error naming the file when it is missing, a folder, another format or unreadable.
    kind names it in messages ("geometry"), command is the one that builds it."""
    import json

    import numpy as np
    from safetensors import SafetensorError, safe_open

    from usgan.expressions import EXPRESSIONS

    path = Path(path).expanduser()
    if not path.is_file():
        problem = f"a folder, not a {kind} file" if path.is_dir() else f"no such {kind} file"
        raise error(f"{path}: {problem} (build one with `python cli.py {command}`)")
    try:
        with safe_open(str(path), "np") as handle:
            header = handle.metadata() or {}
            if header.get("format") != model_format or json.loads(header.get("expressions", "[]")) != list(EXPRESSIONS):
                raise error(f"{path}: not a {model_format} file for expressions {', '.join(EXPRESSIONS)}")
            return header, {name: np.asarray(handle.get_tensor(name)) for name in handle.keys()}
    except error:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as problem:
        first = next(iter(str(problem).splitlines()), "") or type(problem).__name__
        raise error(f"{path}: not a readable {kind} file ({first})") from problem

