"""convert --engine ray: the files of a convert run on a Ray cluster (Ray Core tasks and actors).

Photos go in chunks of batch_size files through three steps chained by object references, so that no image passes
through the driver: prepare (a CPU task per photo: read, detect, align), synthesize (one call of a generator actor
for the whole chunk: the generator is loaded once per actor and batched across files; a GPU share where the cluster
has GPUs, CPU otherwise) and finish (a CPU task per photo: blend, write atomically). A video is one whole-file task
that runs the streaming video pipeline inside. The driver keeps a bounded number of files in flight, hands on each
file's result when its last step ends, and records a file whose worker or node died (after Ray's own retries) as
failed with the reason: every file gives exactly one result. Ctrl-C cancels the work in flight, keeps the results
that still arrive, removes any output a cancelled task renamed into place but could not report (discard_unreported,
as the local engine does), then raises KeyboardInterrupt; a Ray started for the run is shut down. Why tasks and actors rather
than Ray Data: docs/RAY.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import ray

from pipeline.batch_workers import (discard_unreported, failed, file_result, interrupt_flag, one_line, split_kinds,
                                    worker_config)
from pipeline.config import ProcessConfig
from pipeline.errors import os_reason
from pipeline.edit import EditedFrame, Models, load_models
from pipeline.images import is_image_path
from pipeline.manifest import FileResult, Source
from pipeline.stills import ImageOutcome, ImageTask, attempt, finish_task, plan_tasks, read_task, synthesize_pending
from usgan.errors import Stopped, UserError

log = logging.getLogger(__name__)

GPU_SHARE = 0.5  # of one GPU per generator actor: two actors keep a GPU busy while each waits for its next chunk
_POLL_S = 0.1  # how often the driver looks for Ctrl-C while it waits for results
_STOP_S = 10.0  # after Ctrl-C, how long the driver waits for the cancelled work to settle
_MODELS: dict[tuple[str, str], Models] = {}  # per Ray worker process, which Ray reuses across tasks: loaded once


# ---------------------------------------------------------------- in the Ray workers


def worker_models(config: ProcessConfig, settings: str, generator: bool) -> Models:
    """This worker process's models for these settings, loaded by its first task; CPU steps load no generator."""
    key = (settings, "full" if generator else "faces")
    if key not in _MODELS:  # CPU steps load no generator: it runs in its own actor
        _MODELS[key] = load_models(config, generator=generator)
    return _MODELS[key]


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=1, num_returns=2, scheduling_strategy="SPREAD")  # new work over every node
def prepare_photo(source: Source, index: int, out_dir: Path, config: ProcessConfig,
                  settings: str) -> tuple[ImageTask | FileResult, str]:
    """Read a photo and find and align its faces (a failure is the file's result already); and this node."""
    started = time.perf_counter()
    config = worker_config(config, os.cpu_count() or 1)  # one core: this task's share of its node
    models = worker_models(config, settings, generator=False)
    task = ImageTask(index, source.path, out_dir / source.relative, started)
    task = next(plan_tasks([attempt(task, lambda: read_task(task))], models, config))
    if task.error is not None:
        return file_result(source, settings, ImageOutcome(source.path, error=task.error)), node_id()
    return replace(task, started=time.perf_counter() - started), node_id()  # a duration: two nodes' clocks differ


@ray.remote(num_cpus=1)
def finish_photo(source: Source, task: ImageTask | FileResult, edits: tuple | FileResult, prepared_on: str,
                 config: ProcessConfig, settings: str) -> tuple[FileResult, str]:
    """Blend a photo's edited faces back and write it (atomically); (its result, the nodes that did the work)."""
    nodes = f"{prepared_on} and {node_id()}"
    if isinstance(task, FileResult) or isinstance(edits, FileResult):
        return (task if isinstance(task, FileResult) else edits), nodes
    config = worker_config(config, os.cpu_count() or 1)
    models = worker_models(config, settings, generator=False)
    task = replace(task, started=time.perf_counter() - task.started, edited=EditedFrame(task.job.frame, edits))
    return file_result(source, settings, finish_task(task, models, config)), nodes


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def convert_video(source: Source, out_dir: Path, config: ProcessConfig, settings: str) -> tuple[FileResult, str]:
    """A whole video with its own streaming pipeline (decode, faces, generator, blend, encode) in this task."""
    from pipeline.batch_workers import convert_file

    config = worker_config(config, os.cpu_count() or 1)
    return convert_file(source, out_dir, config, worker_models(config, settings, generator=True), settings), node_id()


@ray.remote(max_restarts=2, max_task_retries=2)
class GeneratorActor:
    """The generator, loaded once; synthesizes the faces of a chunk of photos in batches across them."""

    def __init__(self, config: ProcessConfig, settings: str):
        self.config = worker_config(config, 1)  # every core of the node: the generator bounds a CPU run
        self.synthesizer = worker_models(self.config, settings, generator=True).synthesizer
        self.settings = settings

    def synthesize(self, sources: Sequence[Source], *tasks: ImageTask | FileResult) -> object:
        """Per photo (one return value each): its FaceEdits, or its result when it failed here or before."""
        ready = [task for task in tasks if isinstance(task, ImageTask)]
        done = iter(synthesize_pending(ready, self.synthesizer, self.config.batch_size))
        edited = [task if isinstance(task, FileResult) else next(done) for task in tasks]
        edits = [self.edits(source, task) for source, task in zip(sources, edited)]
        return edits if len(edits) > 1 else edits[0]

    def edits(self, source: Source, task: ImageTask | FileResult) -> tuple | FileResult:
        if isinstance(task, FileResult):
            return task
        if task.error is not None:
            return file_result(source, self.settings, ImageOutcome(source.path, error=task.error))
        return task.edited.edits


# ---------------------------------------------------------------- the driver


def convert_on_ray(todo: Sequence[Source], out_dir: Path, config: ProcessConfig, settings: str, jobs: int,
                   address: str | None = None) -> Iterator[FileResult]:
    """The engine (pipeline.engines.ConvertFiles) on Ray: address joins a running cluster ('auto': the one this
    machine belongs to); None starts a local Ray with jobs CPUs for the run. A Ray already initialised is used."""
    if not todo:
        return
    with ray_session(address, jobs):
        yield from RayConvert(out_dir, config, settings).results(todo)


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int) -> Iterator[None]:
    """Ray for the run: connected (or started) here and shut down after, unless the caller initialised it."""
    if ray.is_initialized():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    # "local": a new Ray of its own even where a cluster runs on this machine (None would join that one)
    started = {"num_cpus": max(2, cpus), "include_dashboard": False} if address is None else {}
    check_reachable(address)
    # Ray says on every start that it enabled its token authentication: the default, nothing for the user to do
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, **started)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayAddressError(f"--ray-address {address}: cannot join a Ray cluster there ({one_line(error)})") \
            from error
    try:
        yield
    finally:
        ray.shutdown()
        with contextlib.suppress(ValueError):  # ray.init replaced it (main thread only)
            signal.signal(signal.SIGTERM, previous)


class RayAddressError(UserError):
    """A --ray-address where no Ray cluster answers."""


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail at once, in one line, where HOST:PORT does not answer (Ray itself retries for minutes, loudly)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # None (a local Ray), "auto", or ray://: Ray finds or refuses those quickly itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayAddressError(f"--ray-address {address}: no Ray cluster answers there ({os_reason(error)}); start "
                              "one with `ray start --head`, or leave --ray-address out for a Ray of this run's own") \
            from error


class RayConvert:
    """One convert run's work on Ray: submits files a chunk at a time, collects results as they finish."""

    def __init__(self, out_dir: Path, config: ProcessConfig, settings: str):
        self.out_dir, self.config, self.settings = out_dir, replace(config, progress=False), settings
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), max(1, int(resources.get("CPU", 1)))
        count = max(1, int(gpus / GPU_SHARE)) if gpus else max(1, len([n for n in ray.nodes() if n["Alive"]]))
        options = {"num_gpus": GPU_SHARE, "num_cpus": 0} if gpus else {"num_cpus": 0}
        self.video_options = {"num_gpus": GPU_SHARE} if gpus else {}
        self.generators = [GeneratorActor.options(scheduling_strategy="SPREAD", **options).remote(
            self.config, settings) for _ in range(count)]
        self.chunk = max(1, config.batch_size)
        self.limit = max(2 * self.chunk, 4 * cpus)  # files in flight: enough to keep every core and generator busy
        self.submitted = 0

    def results(self, todo: Sequence[Source]) -> Iterator[FileResult]:
        """Each file's result as it finishes; on Ctrl-C, cancel, keep what still arrives, raise KeyboardInterrupt."""
        images, videos = split_kinds(todo)
        waiting = deque([images[start:start + self.chunk] for start in range(0, len(images), self.chunk)]
                        + [[video] for video in videos])
        pending: dict[ray.ObjectRef, Source] = {}
        reported: set[str] = set()
        since = time.time()
        with interrupt_flag() as interrupted:
            try:
                while (waiting or pending) and not interrupted.is_set():
                    while waiting and len(pending) < self.limit:
                        pending.update(self.submit(waiting.popleft()))
                    for result in self.collect(pending, _POLL_S):
                        reported.add(result.source)
                        yield result
            finally:  # Ctrl-C, or the caller stopped early: no new output after this
                for ref in pending:
                    ray.cancel(ref)
            if interrupted.is_set():
                for result in self.collect(pending, _STOP_S, until_all=True):
                    reported.add(result.source)
                    yield result
                for ref in pending:  # still running after _STOP_S: end its worker, so it writes nothing later
                    ray.cancel(ref, force=True)
        if interrupted.is_set():
            # a task cancelled between its rename and its return wrote a file nobody will record
            discard_unreported(todo, reported, self.out_dir, since)
            raise Stopped(interrupted.signum)

    def submit(self, sources: list[Source]) -> dict[ray.ObjectRef, Source]:
        """The last step's reference of each file of a chunk (photos) or of one video."""
        config, settings, out_dir = self.config, self.settings, self.out_dir
        if not is_image_path(sources[0].path):
            return {convert_video.options(**self.video_options).remote(sources[0], out_dir, config, settings):
                    sources[0]}
        prepared, nodes = zip(*[prepare_photo.remote(source, self.submitted + n, out_dir, config, settings)
                                for n, source in enumerate(sources)])
        self.submitted += len(sources)
        generator = self.generators[(self.submitted // self.chunk) % len(self.generators)]
        edits = generator.synthesize.options(num_returns=len(sources)).remote(sources, *prepared)
        edits = edits if len(sources) > 1 else [edits]
        return {finish_photo.remote(source, task, edit, node, config, settings): source
                for source, task, edit, node in zip(sources, prepared, edits, nodes)}

    def collect(self, pending: dict[ray.ObjectRef, Source], timeout: float,
                until_all: bool = False) -> Iterator[FileResult]:
        """The results that finish within timeout (the first one only, unless until_all), removed from pending."""
        deadline = time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending) if until_all else 1,
                                timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                result = self.outcome(ref, pending.pop(ref))
                if result is not None:
                    yield result
            if not until_all or time.monotonic() >= deadline:
                return

    def outcome(self, ref: ray.ObjectRef, source: Source) -> FileResult | None:
        """The file's result; failed with the reason when its worker, actor or node died; None when cancelled."""
        try:
            result, node = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return None
        except ray.exceptions.RayError as error:
            cause = getattr(error, "cause", None) or error
            return failed(source, self.settings, f"not converted on Ray: {one_line(cause)}")
        log.debug("%s: %s on node %s", source.relative, result.status, node)  # nodes: "A and B" for photos
        return result
