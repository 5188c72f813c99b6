"""File helpers shared by training, the weights files and the product pipeline."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) and rename the result to path, so no half-written file is ever left at path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary user files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
