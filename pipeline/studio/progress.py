"""A long run (render, folder conversion) in a thread of its own, followed and cancelled through RunHooks, and the
progress line the page shows for it: done / total, rate and time left."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipeline.hooks import RunHooks

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """units done of total (None: unknown) after elapsed seconds."""

    done: int
    total: int | None
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None while unknown."""
        if not self.total or not self.done:
            return None
        return max(0, self.total - self.done) / self.rate


def clock(seconds: float | None) -> str:
    """'1:05' (m:ss), or '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def progress_text(progress: Progress, unit: str) -> str:
    """'120 / 216 frames, 14.2 fps, ETA 0:07' (files: 'files/s')."""
    rate = f"{progress.rate:.1f} {'fps' if unit == 'frames' else unit + '/s'}"
    return f"{progress.done} / {progress.total or '?'} {unit}, {rate}, ETA {clock(progress.eta)}"


def progress_html(progress: Progress, unit: str) -> str:
    """A progress bar and its line of text."""
    bar = f'<progress value="{progress.done}" max="{progress.total or 0}"></progress>' if progress.total else ""
    return f'<div class="run-progress">{bar}<span>{html.escape(progress_text(progress, unit))}</span></div>'


def message_html(text: str) -> str:
    return f'<div class="run-progress"><span>{html.escape(text)}</span></div>'


class BackgroundRun(Generic[T]):
    """work(hooks) in a daemon thread; poll with wait(), stop with cancel(), then result() returns or raises."""

    def __init__(self, work: Callable[[RunHooks], T]):
        self.hooks = RunHooks(self.record)
        self.started = time.perf_counter()
        self.latest = (0, None)
        self.outcome: tuple[T | None, BaseException | None] = (None, None)
        self.thread = threading.Thread(target=self.run, args=(work,), name="usgan-studio-run", daemon=True)
        self.thread.start()

    def record(self, done: int, total: int | None) -> None:
        self.latest = (done, total)

    def run(self, work: Callable[[RunHooks], T]) -> None:
        try:
            self.outcome = (work(self.hooks), None)
        except BaseException as error:  # noqa: BLE001 - handed to the page through result()
            self.outcome = (None, error)

    def wait(self, seconds: float) -> bool:
        """Wait up to seconds; True while still running."""
        self.thread.join(seconds)
        return self.thread.is_alive()

    def progress(self) -> Progress:
        done, total = self.latest
        return Progress(done, total, time.perf_counter() - self.started)

    def cancel(self) -> None:
        self.hooks.cancel.set()

    def result(self) -> T:
        """The work's return value, or its exception raised here (once the thread has ended)."""
        self.thread.join()
        value, error = self.outcome
        if error is not None:
            raise error
        return value
