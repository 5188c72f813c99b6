"""convert's processing: every file with one set of models, here (--jobs 1) or in worker processes, file by file.

Both ways stream the still images together through process_images (the generator batched across photos), then the
videos one by one, and hand back each file's result as soon as its output is written, so the manifest can record it.
With --jobs N, N worker processes each load the models once and pull files from two shared queues (images, then
videos, largest first). They start with Ctrl-C blocked: on Ctrl-C the driver stops them with SIGTERM (WorkerStop:
no new file, the photos already in a worker's pipeline finished and reported, a video in hand abandoned without a
temp file), collects every result they send, removes any output a worker renamed into place but could not report
(a worker killed after _STOP_S; discard_unreported), and only then raises KeyboardInterrupt itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from pipeline.errors import describe_os_error
from pipeline.images import is_image_path
from pipeline.manifest import FileResult, Source, stamp
from pipeline.config import ProcessConfig, share_threads
from pipeline.edit import load_models
from pipeline.process import process_file
from pipeline.stills import ImageOutcome, process_images
from usgan.errors import Stopped, UserError

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often the driver looks for Ctrl-C and for workers that ended
_STOP_S = 30.0  # how long a stopped worker may take to abandon its file before it is killed


# ---------------------------------------------------------------- one file's result


def one_line(error: BaseException) -> str:
    """A failed file's reason: a UserError's message, an OSError's path and problem, else type and first line."""
    if isinstance(error, OSError):
        return describe_os_error(error)
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def file_result(source: Source, settings: str, outcome: ImageOutcome, seconds: float = 0.0) -> FileResult:
    """The manifest entry for one file's outcome: done (with a note when no face was found) or failed and why."""
    if outcome.result is None:
        log.debug("%s failed", source.path, exc_info=outcome.error)
        return FileResult(source.relative, "failed", one_line(outcome.error), 0, seconds, **stamp(source, settings))
    result = outcome.result
    reason = "" if result.faces_found else "no face found; written unchanged"
    return FileResult(source.relative, "done", reason, result.faces_edited, result.seconds,
                      **stamp(source, settings), without_geometry=result.faces_without_geometry or 0)


def failed(source: Source, settings: str, reason: str) -> FileResult:
    return FileResult(source.relative, "failed", reason, **stamp(source, settings))


# ---------------------------------------------------------------- with one set of models


def convert_file(source: Source, out_dir: Path, config: ProcessConfig, models, settings: str) -> FileResult:
    """Process one file; any failure becomes a failed result with a one-line reason (the batch goes on)."""
    started = time.perf_counter()
    try:
        result = process_file(source.path, out_dir / source.relative, config, models)
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch; its reason is recorded
        return file_result(source, settings, ImageOutcome(source.path, error=error), time.perf_counter() - started)
    return file_result(source, settings, ImageOutcome(source.path, result))


def convert_images(sources: Iterable[Source], out_dir: Path, config: ProcessConfig, models,
                   settings: str) -> Iterator[FileResult]:
    """Still images through process_images' overlapping stages, in order; sources may be a stream (a queue)."""
    taken: deque[Source] = deque()

    def pairs() -> Iterator[tuple[Path, Path]]:
        for source in sources:
            taken.append(source)
            yield source.path, out_dir / source.relative

    for outcome in process_images(pairs(), config, models):
        yield file_result(taken.popleft(), settings, outcome)


def convert_sources(images: Iterable[Source], videos: Iterable[Source], out_dir: Path, config: ProcessConfig,
                    models, settings: str) -> Iterator[FileResult]:
    """The still images streamed together, then the videos one by one."""
    yield from convert_images(images, out_dir, config, models, settings)
    for source in videos:
        yield convert_file(source, out_dir, config, models, settings)


def split_kinds(sources: Sequence[Source]) -> tuple[list[Source], list[Source]]:
    """(images, videos), the videos largest first so that parallel workers end close together."""
    images = [source for source in sources if is_image_path(source.path)]
    videos = sorted((s for s in sources if not is_image_path(s.path)), key=lambda s: s.size, reverse=True)
    return images, videos


def worker_config(config: ProcessConfig, jobs: int) -> ProcessConfig:
    """Per-worker config: no progress bars, and the cores shared out between the workers."""
    cpus = max(1, (os.cpu_count() or 1) // jobs)
    encoder = replace(config.encoder, threads=config.encoder.threads or cpus)
    return share_threads(replace(config, progress=False, encoder=encoder), cpus)


def convert_here(todo: Sequence[Source], out_dir: Path, config: ProcessConfig, settings: str) -> Iterator[FileResult]:
    """--jobs 1: every file in this process; an unusable model (weights, detector) is the run's error."""
    config = worker_config(config, 1)
    models = load_models(config)
    yield from convert_sources(*split_kinds(todo), out_dir, config, models, settings)


# ---------------------------------------------------------------- worker processes


def convert_in_workers(todo: Sequence[Source], out_dir: Path, config: ProcessConfig, jobs: int,
                       settings: str) -> Iterator[FileResult]:
    """--jobs N: results file by file from N worker processes; see the module docstring for Ctrl-C."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked locks or threads
    count = min(jobs, len(todo))
    tasks = [task_queue(context, share, count) for share in split_kinds(todo)]
    results = context.Queue()
    args = (*tasks, results, out_dir, worker_config(config, jobs), settings)
    workers = [context.Process(target=work, args=args, name=f"usgan-convert-{n}", daemon=True) for n in range(count)]
    reported: set[str] = set()
    since = time.time()
    with interrupt_flag() as interrupted:
        with sigint_blocked():
            for worker in workers:
                worker.start()
        try:
            for result in collect(results, workers, interrupted):
                reported.add(result.source)
                yield result
        finally:
            end_workers(workers)
    if interrupted.is_set():
        discard_unreported(todo, reported, out_dir, since)
        raise Stopped(interrupted.signum)
    codes = ", ".join(sorted({str(worker.exitcode) for worker in workers if worker.exitcode}))
    for source in todo:
        if source.relative not in reported:
            yield failed(source, settings, f"not converted: a worker process ended (exit code {codes or 0})")


def task_queue(context, sources: Sequence[Source], workers: int):
    """A queue holding sources, then one end marker per worker."""
    tasks = context.Queue()
    tasks.cancel_join_thread()  # a stopped run leaves tasks behind; exiting must not wait to flush them
    for item in [*sources, *[None] * workers]:
        tasks.put(item)
    return tasks


def collect(results, workers: Sequence, interrupted: threading.Event) -> Iterator[FileResult]:
    """Each result as it arrives until every worker has ended; after Ctrl-C, stop them and keep collecting."""
    stopped_at: float | None = None
    while any(worker.is_alive() for worker in workers):
        if interrupted.is_set() and stopped_at is None:
            stopped_at = time.monotonic()
            signal_workers(workers, signal.SIGTERM)
        if stopped_at is not None and time.monotonic() - stopped_at > _STOP_S:
            signal_workers(workers, signal.SIGKILL)
        with contextlib.suppress(queue.Empty):
            yield results.get(timeout=_POLL_S)
    with contextlib.suppress(queue.Empty):  # what the last workers sent just before they ended
        while True:
            yield results.get_nowait()


def signal_workers(workers: Sequence, signum: int) -> None:
    for worker in workers:
        if worker.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)


def end_workers(workers: Sequence) -> None:
    """Stop workers still running (the caller gave up early), killing any that does not end in time."""
    if not any(worker.is_alive() for worker in workers):
        return
    signal_workers(workers, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    signal_workers(workers, signal.SIGKILL)


class StopFlag(threading.Event):
    """Set by the first Ctrl-C or SIGTERM; signum: which one."""

    signum = signal.SIGINT

    def request(self, signum: int, frame: object) -> None:
        if not self.is_set():
            self.signum = signum
        self.set()


@contextlib.contextmanager
def interrupt_flag() -> Iterator[StopFlag]:
    """While inside, Ctrl-C or SIGTERM sets the flag instead of raising (main thread only), so the workers can be
    drained."""
    interrupted = StopFlag()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield interrupted
        return
    previous = {signum: signal.signal(signum, interrupted.request) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Processes started inside inherit a blocked SIGINT: Ctrl-C reaches the driver only, which stops them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def work(images, videos, results, out_dir: Path, config: ProcessConfig, settings: str) -> None:
    """A worker process: load the models once, convert the files it pulls, and send each result when written."""
    stop = WorkerStop()
    signal.signal(signal.SIGTERM, stop.request)
    with contextlib.suppress(KeyboardInterrupt):  # a video in hand was abandoned; it left no temp file
        for result in worker_results(stop.take(images), stop.take(videos, video=True), out_dir, config, settings):
            results.put(result)


class WorkerStop:
    """The driver's SIGTERM: take no new file, finish and report the photos in hand (their outputs may already be
    renamed into place), abandon a video in hand at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_video = False

    def request(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.in_video:
            raise KeyboardInterrupt

    def take(self, tasks, video: bool = False) -> Iterator[Source]:
        while not self.requested and (source := tasks.get()) is not None and not self.requested:
            self.in_video = video
            yield source
            self.in_video = False


def discard_unreported(todo: Sequence[Source], reported: set[str], out_dir: Path, since: float) -> None:
    """Remove what a stopped worker renamed into place but could not report before it ended, so the manifest stays
    true to the disk; the next run redoes those files. Only outputs written by this run (mtime >= since) go."""
    for source in todo:
        output = out_dir / source.relative
        with contextlib.suppress(FileNotFoundError):
            if source.relative not in reported and output.stat().st_mtime >= since:
                log.info("%s: written while stopping, not reported: removed", output)
                output.unlink()


def worker_results(images: Iterator[Source], videos: Iterator[Source], out_dir: Path, config: ProcessConfig,
                   settings: str) -> Iterator[FileResult]:
    try:
        models = load_models(config)
    except UserError as error:  # weights or detector unusable: every file this worker pulls fails with that reason
        for source in (*images, *videos):
            yield failed(source, settings, one_line(error))
        return
    yield from convert_sources(images, videos, out_dir, config, models, settings)
