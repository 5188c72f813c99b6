"""User-facing I/O errors of the pipeline; each message is one line naming the file and the problem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from usgan.errors import UserError


class InputError(UserError):
    """An input file that is missing, empty, truncated, unreadable or of the wrong kind."""


class OutputError(UserError):
    """An output path that cannot or must not be written (unknown extension, unwritable folder, == input)."""


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
    folder = nearest_existing_folder(output.parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: cannot write into folder {folder} (permission denied)")
    return output


def nearest_existing_folder(folder: Path) -> Path:
    """The folder itself or its closest existing ancestor (the one that must be writable to create it)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: exists but is not a folder")
    return folder


_OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a folder on the path is a file",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOENT: "no such file or folder",
}


def describe_os_error(error: OSError) -> str:
    """One line naming the path and the problem, e.g. 'out/clip.mp4: no space left on the device'."""
    reason = _OS_REASONS.get(error.errno, error.strerror or str(error) or type(error).__name__)
    if error.errno == errno.EEXIST and error.filename and Path(error.filename).is_dir():
        reason = "already exists"
    return f"{error.filename}: {reason}" if error.filename else reason
