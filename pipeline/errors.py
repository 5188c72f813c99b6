"""User-facing errors of the pipeline; each message is one line naming the file and the problem."""

from __future__ import annotations

from usgan.errors import UserError


class InputError(UserError):
    """An input file that is missing, empty, truncated, unreadable or of the wrong kind."""


class OutputError(UserError):
    """An output path that cannot or must not be written (unknown extension, unwritable folder, == input)."""
