"""How a caller other than the CLI (the studio) follows a long run and stops it.

A workflow calls RunHooks.advance after each unit it finishes (a video's frame, convert's file). Setting the cancel
Event makes the next advance raise RunCancelled, which unwinds the run as Ctrl-C does: the stages stop, and no
half-written file is left at the output path (outputs are written to a temp name and renamed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

ProgressCallback = Callable[[int, "int | None"], None]
"""on_progress(done, total): units finished so far, and the total when known."""


class RunCancelled(Exception):
    """The caller set RunHooks.cancel; raised by the workflow at the next unit it finishes."""


@dataclass(frozen=True)
class RunHooks:
    """A progress callback and a cancel Event for one run; the default follows nothing and never cancels."""

    on_progress: ProgressCallback | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def advance(self, done: int, total: int | None) -> None:
        """Report done of total; raise RunCancelled when cancel is set."""
        if self.cancel.is_set():
            raise RunCancelled("cancelled")
        if self.on_progress is not None:
            self.on_progress(done, total)
