"""convert: process every image and video of a folder into another folder, in parallel, resumably.

Outputs keep their relative path, base name and extension. OUT_DIR/manifest.json (rewritten atomically after every
file or chunk) records each file's status: done (processed now), skipped (complete from an earlier run) or failed
(with its one-line reason). A file counts as complete when its manifest entry is done/skipped with the same settings
and the same input size and mtime, and its output exists; everything else is (re)done. Inputs are only read.

Parallelism: joblib processes over chunks of files; each chunk builds its models (detector, generator) once.
Several chunks per worker keep the manifest, and so a resume, fresh; each worker gets an equal share of the threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from pipeline.config import ProcessConfig, share_threads
from pipeline.edit import load_models
from pipeline.files import nearest_existing_folder
from pipeline.images import is_image_path
from pipeline.process import process_file
from pipeline.schedule import parse_schedule
from pipeline.stills import ImageOutcome, process_images
from pipeline.synthesize import resolve_weights
from pipeline.video.codecs import is_video_path
from usgan.files import atomic_write
from usgan.config import to_mapping
from usgan.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
CHUNKS_PER_JOB = 4  # model loads per worker vs how often the manifest (and a resume) catches up
Status = Literal["done", "skipped", "failed"]
COMPLETE: frozenset[str] = frozenset({"done", "skipped"})


class BatchError(UserError):
    """Folders that convert cannot use (missing, overlapping, unwritable)."""


@dataclass(frozen=True)
class Source:
    """One input file: its path and its path relative to IN_DIR (POSIX, the manifest key and the output path)."""

    path: Path
    relative: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileResult:
    """One file's outcome, as stored in the manifest."""

    source: str
    status: Status
    reason: str = ""
    faces: int = 0
    seconds: float = 0.0
    settings: str = ""
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class BatchSummary:
    """What convert_dir did, file by file (sorted by source path)."""

    results: tuple[FileResult, ...]
    manifest: Path
    seconds: float

    @property
    def counts(self) -> Counter:
        return Counter(result.status for result in self.results)

    @property
    def failed(self) -> tuple[FileResult, ...]:
        return tuple(result for result in self.results if result.status == "failed")


# ---------------------------------------------------------------- folders and files


def check_folders(in_dir: Path, out_dir: Path, recursive: bool) -> None:
    """Refuse OUT_DIR == IN_DIR, OUT_DIR inside IN_DIR when recursive (outputs would be re-read), a file OUT_DIR."""
    source, target = in_dir.resolve(), out_dir.resolve()
    if not source.is_dir():
        raise BatchError(f"{in_dir}: not a folder")
    if target == source:
        raise BatchError(f"{out_dir}: output folder is the input folder; choose another one")
    if recursive and source in target.parents:
        raise BatchError(f"{out_dir}: output folder is inside the input folder {in_dir}, which --recursive would "
                         "read again; choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise BatchError(f"{out_dir}: exists and is not a folder")
    folder = nearest_existing_folder(target)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BatchError(f"{out_dir}: cannot write into folder {folder} (permission denied)")


def list_sources(in_dir: Path, recursive: bool) -> list[Source]:
    """Image and video files of IN_DIR (and its subfolders when recursive), hidden ones left out, sorted."""
    pattern = "**/*" if recursive else "*"
    paths = sorted(p for p in in_dir.glob(pattern) if p.is_file() and (is_image_path(p) or is_video_path(p))
                   and not any(part.startswith(".") for part in p.relative_to(in_dir).parts))
    return [Source(p, p.relative_to(in_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def check_no_output_is_an_input(sources: Sequence[Source], out_dir: Path) -> None:
    """Refuse layouts where an output path would land on one of the inputs (e.g. IN_DIR inside OUT_DIR)."""
    inputs = {source.path.resolve() for source in sources}
    clash = next((s for s in sources if (out_dir / s.relative).resolve() in inputs), None)
    if clash is not None:
        raise BatchError(f"{out_dir / clash.relative}: would overwrite an input file; choose another output folder")


# ---------------------------------------------------------------- manifest


def settings_key(config: ProcessConfig) -> str:
    """A short hash of everything that changes outputs (not progress or queue sizes)."""
    mapping = to_mapping(replace(config, progress=False, queue_size=1))
    text = json.dumps(mapping, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_manifest(path: Path) -> dict[str, FileResult]:
    """Entries of an earlier run's manifest; an unreadable one is ignored (everything is redone) with a warning."""
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {source: FileResult(source=source, **entry) for source, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s: unreadable manifest (%s); processing every file again", path, error)
        return {}


def write_manifest(path: Path, results: dict[str, FileResult], config: ProcessConfig) -> None:
    """OUT_DIR/manifest.json, atomically: each file's status, reason, faces, seconds and settings key."""
    files = {source: {k: v for k, v in asdict(result).items() if k != "source"}
             for source, result in sorted(results.items())}
    document = {"version": MANIFEST_VERSION, "expression": config.expression, "counts": dict(
        Counter(r.status for r in results.values())), "files": files}
    text = json.dumps(document, indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def is_complete(source: Source, previous: FileResult | None, out_dir: Path, settings: str) -> bool:
    """Done earlier with these settings from this very input, and the output is still there."""
    return (previous is not None and previous.status in COMPLETE and previous.settings == settings
            and previous.size == source.size and previous.mtime_ns == source.mtime_ns
            and (out_dir / source.relative).is_file())


# ---------------------------------------------------------------- processing


def convert_file(source: Source, out_dir: Path, config: ProcessConfig, models, settings: str) -> FileResult:
    """Process one file; any failure becomes a failed result with a one-line reason (the batch goes on)."""
    started = time.perf_counter()
    try:
        result = process_file(source.path, out_dir / source.relative, config, models)
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch; its reason is recorded
        return file_result(source, settings, ImageOutcome(source.path, error=error), time.perf_counter() - started)
    return file_result(source, settings, ImageOutcome(source.path, result))


def convert_images(sources: Sequence[Source], out_dir: Path, config: ProcessConfig, models,
                   settings: str) -> Iterator[FileResult]:
    """Still images through process_images' overlapping stages (generator batched across images), in order."""
    if not sources:
        return
    pairs = [(source.path, out_dir / source.relative) for source in sources]
    for source, outcome in zip(sources, process_images(pairs, config, models)):
        yield file_result(source, settings, outcome)


def file_result(source: Source, settings: str, outcome: ImageOutcome, seconds: float = 0.0) -> FileResult:
    """The manifest entry for one file's outcome: done (with a note when no face was found) or failed and why."""
    stamp = {"settings": settings, "size": source.size, "mtime_ns": source.mtime_ns}
    if outcome.result is None:
        log.debug("%s failed", source.path, exc_info=outcome.error)
        return FileResult(source.relative, "failed", one_line(outcome.error), 0, seconds, **stamp)
    result = outcome.result
    reason = "" if result.faces_found else "no face found; written unchanged"
    return FileResult(source.relative, "done", reason, result.faces_edited, result.seconds, **stamp)


def convert_sources(sources: Sequence[Source], out_dir: Path, config: ProcessConfig, models,
                    settings: str) -> Iterator[FileResult]:
    """Every file with one set of models: the still images streamed together, then the videos one by one."""
    images = [source for source in sources if is_image_path(source.path)]
    yield from convert_images(images, out_dir, config, models, settings)
    for source in sources:
        if not is_image_path(source.path):
            yield convert_file(source, out_dir, config, models, settings)


def one_line(error: BaseException) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def convert_chunk(sources: Sequence[Source], out_dir: Path, config: ProcessConfig, settings: str) -> list[FileResult]:
    """Convert several files with one set of models (a worker's unit of work)."""
    try:
        models = load_models(config)
    except UserError as error:  # weights or detector unusable: every file of the chunk fails with that reason
        return [FileResult(s.relative, "failed", one_line(error), settings=settings) for s in sources]
    return list(convert_sources(sources, out_dir, config, models, settings))


def worker_config(config: ProcessConfig, jobs: int) -> ProcessConfig:
    """Per-worker config: no progress bars, and the cores shared out between the workers."""
    cpus = max(1, (os.cpu_count() or 1) // jobs)
    encoder = replace(config.encoder, threads=config.encoder.threads or cpus)
    return share_threads(replace(config, progress=False, encoder=encoder), cpus)


def chunked(items: Sequence[Source], jobs: int) -> list[list[Source]]:
    size = max(1, math.ceil(len(items) / (jobs * CHUNKS_PER_JOB)))
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def run_chunks(todo: Sequence[Source], out_dir: Path, config: ProcessConfig, jobs: int,
               settings: str) -> Iterator[list[FileResult]]:
    """Results as they finish: file by file in this process (jobs 1), chunk by chunk from joblib workers."""
    if jobs <= 1:
        chunk_config = worker_config(config, 1)
        models = load_models(chunk_config) if todo else None
        yield from ([result] for result in convert_sources(todo, out_dir, chunk_config, models, settings))
        return
    from joblib import Parallel, delayed

    worker = worker_config(config, jobs)
    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered")
    yield from parallel(delayed(convert_chunk)(chunk, out_dir, worker, settings) for chunk in chunked(todo, jobs))


def convert_dir(in_dir: Path, out_dir: Path, config: ProcessConfig, recursive: bool = False,
                jobs: int = 1) -> BatchSummary:
    """Convert every image and video of IN_DIR into OUT_DIR; see the module docstring for layout and resume."""
    started = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_folders(in_dir, out_dir, recursive)
    sources = list_sources(in_dir, recursive)
    check_no_output_is_an_input(sources, out_dir)
    parse_schedule(config.expression, config.fade)  # option errors now, not once per file
    resolve_weights(config.synthesizer.weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, settings = out_dir / MANIFEST_NAME, settings_key(config)
    previous = read_manifest(manifest)
    results: dict[str, FileResult] = {}
    for source in sources:
        entry = previous.get(source.relative)
        if is_complete(source, entry, out_dir, settings):
            results[source.relative] = replace(entry, status="skipped", reason="complete from an earlier run")
    todo = [source for source in sources if source.relative not in results]
    try:
        for finished in progress(run_chunks(todo, out_dir, config, jobs, settings), len(todo), config):
            results.update((result.source, result) for result in finished)
            write_manifest(manifest, results, config)
    finally:
        write_manifest(manifest, results, config)  # also on Ctrl-C: what finished is recorded for the resume
    ordered = tuple(results[source.relative] for source in sources if source.relative in results)
    return BatchSummary(ordered, manifest, time.perf_counter() - started)


def progress(chunks: Iterable[list[FileResult]], total: int, config: ProcessConfig) -> Iterator[list[FileResult]]:
    """chunks, advancing a tqdm bar (files) on stderr."""
    from tqdm import tqdm

    with tqdm(total=total, unit="file", file=sys.stderr, disable=not config.progress or total == 0,
              dynamic_ncols=True, leave=False) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def summary_lines(summary: BatchSummary) -> list[str]:
    """Counts, then one line per failed file."""
    counts = summary.counts
    head = (f"{len(summary.results)} file(s) in {summary.seconds:.1f} s: {counts['done']} done, "
            f"{counts['skipped']} skipped (already complete), {counts['failed']} failed; manifest: {summary.manifest}")
    return [head] + [f"failed: {result.source}: {result.reason}" for result in summary.failed]
