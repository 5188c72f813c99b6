"""The workflow for many still images (convert's photos): read, faces and the generator (batched across images) as
a chain of stage threads, blend and write in the caller's thread.

One bad image must not stop the others: each image travels as an ImageTask, and the first step that fails on it
records its error there; later steps pass it on untouched and the caller gets it as that image's outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import ProcessConfig
from pipeline.edit import EditedFrame, FaceJob, Models, blend_frame, load_models, plan_still, synthesize_jobs
from pipeline.images import ImageMeta, read_checked, write_checked
from pipeline.results import ProcessResult, check_paths, geometry_count, warn_if_faceless, warn_if_stills_unedited
from pipeline.stages import StageChain, batched
from pipeline.synthesize import FaceSynthesizer
from pipeline.types import Frame


@dataclass(frozen=True)
class ImageTask:
    """One still image on its way through the stages; the first stage that fails on it sets error, later ones pass
    it on untouched."""

    index: int
    source: Path
    output: Path
    started: float
    image: Frame | None = None
    meta: ImageMeta | None = None
    job: FaceJob | None = None
    edited: EditedFrame | None = None
    error: Exception | None = None
    checked: bool = False  # its paths were checked before it came (read_task checks them otherwise)


@dataclass(frozen=True)
class ImageOutcome:
    """One image of process_images: its result, or the error that stopped it."""

    source: Path
    result: ProcessResult | None = None
    error: Exception | None = None


def process_image(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None,
                  checked: bool = False) -> ProcessResult:
    """Edit the faces of one still image and write it (format from output's extension, atomically): the still-image
    workflow, for one image. checked: the caller has checked both paths (check_paths) already."""
    pairs = [(Path(input_path), Path(output))]
    outcome = next(process_images(pairs, config, models, subject=input_path, checked=checked))
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def process_images(pairs: Iterable[tuple[Path, Path]], config: ProcessConfig, models: Models | None = None,
                   subject: object = "every still image", checked: bool = False) -> Iterator[ImageOutcome]:
    """Edit many still images (input, output), in order, with overlapping stages like a video's. A bad image gives
    an outcome with its error and the others go on; result.seconds is each image's time from read to written (the
    stages overlap). subject: what a warning about the whole run names; checked: the caller has checked every
    pair's paths (else each is checked once, as it is read)."""
    models = models or load_models(config)
    warn_if_stills_unedited(models, config, subject)
    # queue_size (>= batch_size by default) images between stages: the generator finds a full batch waiting and can
    # hand all of it on without waiting for the writer.
    chain = StageChain(max(config.queue_size, config.batch_size))
    chain.add("read", lambda _: read_tasks(pairs, checked))
    chain.add("faces", lambda tasks: plan_tasks(tasks, models, config))
    chain.add("synthesize", lambda tasks: synthesize_tasks(tasks, models.synthesizer, config.batch_size))
    with chain.running() as tasks:
        for task in tasks:
            yield finish_task(task, models, config)


def attempt(task: ImageTask, step: Callable[[], dict[str, Any]]) -> ImageTask:
    """task with the fields step() returns, or with the error it raised; a task that already failed is passed on."""
    if task.error is not None:
        return task
    try:
        return replace(task, **step())
    except Exception as error:  # noqa: BLE001 - recorded on the task and reported by the caller, file by file
        return replace(task, error=error)


def read_tasks(pairs: Iterable[tuple[Path, Path]], checked: bool = False) -> Iterator[ImageTask]:
    """(input, output) pairs as tasks holding the decoded image and its metadata."""
    for index, (source, output) in enumerate(pairs):
        task = ImageTask(index, Path(source), Path(output), time.perf_counter(), checked=checked)
        yield attempt(task, lambda: read_task(task))


def read_task(task: ImageTask) -> dict[str, Any]:
    """The image and its metadata, its paths checked first (once per file) unless the caller has."""
    if not task.checked:
        check_paths(task.source, task.output, "image")
    image, meta = read_checked(task.source)
    return {"image": image, "meta": meta}


def plan_tasks(tasks: Iterable[ImageTask], models: Models, config: ProcessConfig) -> Iterator[ImageTask]:
    """Find and align each image's faces (still-image detection: padded retry for tight crops), and give them
    their warp fields when geometry is on."""
    for task in tasks:
        yield attempt(task, lambda: {"job": plan_still(task.index, task.image, models, config)})


def synthesize_tasks(tasks: Iterable[ImageTask], synthesizer: FaceSynthesizer, batch_size: int) -> Iterator[ImageTask]:
    """Batch crops across consecutive images (up to batch_size crops or images), in order."""
    for pending in batched(tasks, batch_size, lambda task: len(task.job.crops) if task.job else 0):
        yield from synthesize_pending(pending, synthesizer, batch_size)


def synthesize_pending(tasks: Sequence[ImageTask], synthesizer: FaceSynthesizer, batch_size: int) -> list[ImageTask]:
    """The tasks with their edits; a failed generator call fails the images of this batch only."""
    ready = [task for task in tasks if task.error is None]
    try:
        edited = iter(synthesize_jobs([task.job for task in ready], synthesizer, batch_size))
    except Exception as error:  # noqa: BLE001 - the images of this batch fail with it; the next batch goes on
        return [replace(task, error=error) if task.error is None else task for task in tasks]
    return [replace(task, edited=next(edited)) if task.error is None else task for task in tasks]


def finish_task(task: ImageTask, models: Models, config: ProcessConfig) -> ImageOutcome:
    """Blend and write one image (atomically); its outcome."""
    task = attempt(task, lambda: write_task(task, models, config))
    if task.error is not None:
        return ImageOutcome(task.source, error=task.error)
    warn_if_faceless(task.source, task.job.faces_found, "written unchanged")
    result = ProcessResult(task.output, "image", 1, task.job.faces_found, len(task.job.crops),
                           time.perf_counter() - task.started,
                           faces_without_geometry=geometry_count(models, task.job.without_geometry))
    return ImageOutcome(task.source, result)


def write_task(task: ImageTask, models: Models, config: ProcessConfig) -> dict[str, Any]:
    write_checked(task.output, blend_frame(task.edited, models.mask, config), task.meta)
    return {}
