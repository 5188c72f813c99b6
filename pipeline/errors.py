"""User-facing errors of the pipeline; each message is one line naming the file and the problem."""

from __future__ import annotations

import errno
from pathlib import Path

from usgan.errors import UserError


class InputError(UserError):
    """An input file that is missing, empty, truncated, unreadable or of the wrong kind."""


class OutputError(UserError):
    """An output path that cannot or must not be written (unknown extension, unwritable folder, == input)."""


_OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large for the device or the file size limit",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a folder on the path is a file",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
}


def os_reason(error: OSError) -> str:
    """The problem alone, in words: 'no space left on the device'."""
    if error.errno == errno.EEXIST and error.filename and Path(error.filename).is_dir():
        return "already exists"
    return _OS_REASONS.get(error.errno, error.strerror or str(error) or type(error).__name__)


def describe_os_error(error: OSError) -> str:
    """One line naming the path and the problem, e.g. 'out/clip.mp4: no space left on the device'."""
    return f"{error.filename}: {os_reason(error)}" if error.filename else os_reason(error)
