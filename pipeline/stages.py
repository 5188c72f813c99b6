"""The one thread/queue runtime: a chain of stages, each in its own thread, joined by small bounded queues.

Every stage is a function from an iterable of items to an iterable of results. The chain runs them at once, so
decoding, face tracking, the generator and blending overlap, and memory stays constant whatever the input's length.
Items keep their order (one worker per stage). Any worker's exception stops every stage and is re-raised in the
caller, which consumes the last stage's results in its own thread. Each stage's busy time (wall time minus waiting
on its queues) is measured, so the slowest stage is visible.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
Work = Callable[[Iterable[Any]], Iterable[Any]]
"""A stage: takes the previous stage's results (the first stage gets an empty tuple) and yields its own."""

POLL_S = 0.1  # how often a blocked queue wait checks whether the run was stopped
JOIN_S = 10.0  # how long the caller waits for a stopped worker (one generator batch at most)
_END = object()


class Stopped(Exception):
    """Raised inside a stage when another stage failed or the caller gave up; never reaches the user."""


class Channel:
    """A bounded FIFO between two stages; waits give up when `stop` is set and are timed for the stage report."""

    def __init__(self, size: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = stop
        self.put_wait = 0.0
        self.get_wait = 0.0

    def put(self, item: object) -> None:
        started = time.perf_counter()
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                self.queue.put(item, timeout=POLL_S)
                break
            except queue.Full:
                continue
        self.put_wait += time.perf_counter() - started

    def __iter__(self) -> Iterator[Any]:
        while True:
            started = time.perf_counter()
            item = self._get()
            self.get_wait += time.perf_counter() - started
            if item is _END:
                return
            yield item

    def _get(self) -> object:
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                return self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue


class StageThread(threading.Thread):
    """Runs work(source) and puts every result into sink, then an end marker; records busy time and failures."""

    def __init__(self, name: str, work: Work, source: Iterable[Any], sink: Channel, errors: list[BaseException]):
        super().__init__(name=f"usgan-{name}", daemon=True)  # daemon: a stuck worker never keeps the process alive
        self.stage, self.work, self.source, self.sink, self.errors = name, work, source, sink, errors
        self.busy = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        results: Iterator[Any] | None = None
        try:
            results = iter(self.work(self.source))
            for item in results:
                self.sink.put(item)
            self.sink.put(_END)
        except Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the caller, which re-raises it
            self.errors.append(error)
            self.sink.stop.set()
        finally:
            with contextlib.suppress(Exception):
                getattr(results, "close", lambda: None)()  # closes a stopped decoder's file at once
            waited = self.sink.put_wait + (self.source.get_wait if isinstance(self.source, Channel) else 0.0)
            self.busy = time.perf_counter() - started - waited


class StageChain:
    """Stages added in order, each reading the previous one's results; `running` starts them and always stops them.

        chain = StageChain(queue_size=8)
        chain.add("decode", lambda _: decode(path))
        chain.add("blend", lambda frames: blend(frames))
        with chain.running() as results:
            encode(results)
    """

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[StageThread] = []
        self.output: Iterable[Any] = ()

    def add(self, name: str, work: Work) -> None:
        """Append a stage that reads the current last stage's results."""
        sink = Channel(self.queue_size, self.stop)
        self.threads.append(StageThread(name, work, self.output, sink, self.errors))
        self.output = sink

    @contextlib.contextmanager
    def running(self) -> Iterator[Iterable[Any]]:
        """Start the stage threads and yield the last stage's results; on leaving, stop and join every thread and
        raise the first worker's error (the consumer's own errors, Ctrl-C included, pass through)."""
        for thread in self.threads:
            thread.start()
        stopped = False
        try:
            yield self.output
        except Stopped:
            stopped = True  # a worker failed; its error is raised below
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(JOIN_S)
        if self.errors:
            raise self.errors[0]
        if stopped:
            raise RuntimeError("pipeline stopped without an error")  # unreachable: Stopped follows a worker error

    def busy_seconds(self) -> dict[str, float]:
        """Each stage's busy seconds (once `running` has ended)."""
        return {thread.stage: thread.busy for thread in self.threads}

    def consumer_wait(self) -> float:
        """Seconds the consumer spent waiting for the last stage's results."""
        return self.output.get_wait if isinstance(self.output, Channel) else 0.0


def batched(items: Iterable[T], size: int, weight: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive items in groups that end once their weights (e.g. face crops) reach size or they hold size
    items; the last group holds whatever is left (never empty)."""
    pending: list[T] = []
    total = 0
    for item in items:
        pending.append(item)
        total += weight(item)
        if total >= size or len(pending) >= size:
            yield pending
            pending, total = [], 0
    if pending:
        yield pending

