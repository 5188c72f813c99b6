"""convert: process every image and video of a folder into another folder, in parallel, resumably.

Outputs keep their relative path, base name and extension. OUT_DIR/manifest.json (pipeline.manifest, rewritten
atomically as soon as each file is written) accounts for every file of IN_DIR: done, skipped (complete from an
earlier run, or of an unsupported type) or failed with its reason; hidden files are left out. A re-run skips the
complete ones, also after Ctrl-C. Inputs are only read. Which engine processes the files: pipeline.engines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.config import ProcessConfig, parse_edit
from pipeline.engines import ConvertFiles, convert_locally
from pipeline.errors import os_reason
from pipeline.files import nearest_existing_folder
from pipeline.hooks import RunHooks
from pipeline.images import is_image_path
from pipeline.manifest import (
    COMPLETE_REASON, MANIFEST_NAME, UNSUPPORTED_REASON, FileResult, ManifestError, Source, is_complete, read_manifest,
    settings_key, unsupported, write_manifest,
)
from pipeline.results import without_geometry_text
from pipeline.video.codecs import is_video_path
from usgan.errors import UserError
from usgan.files import output_folder


class BatchError(UserError):
    """Folders that convert cannot use (missing, overlapping, unwritable)."""


@dataclass(frozen=True)
class BatchSummary:
    """What convert_dir did, file by file (sorted by source path)."""

    results: tuple[FileResult, ...]
    manifest: Path
    seconds: float
    geometry: bool = False  # expression geometry was on

    @property
    def without_geometry(self) -> int:
        """Faces edited in this run whose landmarks failed (the generator alone)."""
        return sum(result.without_geometry for result in self.results if result.status == "done")

    @property
    def counts(self) -> Counter:
        """Files per status, and per reason of the skipped ones ('complete', 'unsupported')."""
        counts = Counter(result.status for result in self.results)
        counts["complete"] = sum(result.reason == COMPLETE_REASON for result in self.results)
        counts["unsupported"] = sum(result.reason == UNSUPPORTED_REASON for result in self.results)
        counts["unusable"] = counts["skipped"] - counts["complete"] - counts["unsupported"]
        return counts

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
    folder = nearest_existing_folder(target, out_dir)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BatchError(f"{out_dir}: cannot write into folder {folder} (permission denied)")


def list_files(in_dir: Path, recursive: bool) -> tuple[list[Source], list[FileResult]]:
    """Every file of IN_DIR (and of its subfolders when recursive), hidden ones left out, sorted; and every entry
    that is not a usable file (a broken or looping link, a pipe, an unreadable folder), skipped with its reason."""
    files: list[Source] = []
    unusable: list[FileResult] = []
    scan_folder(in_dir, in_dir, recursive, files, unusable)
    return sorted(files, key=lambda source: source.path), unusable


def scan_folder(folder: Path, in_dir: Path, recursive: bool, files: list[Source], unusable: list[FileResult]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        unusable.append(FileResult(f"{folder.relative_to(in_dir).as_posix()}/", "skipped",
                                   f"an unreadable folder ({os_reason(error)}): its files were not converted"))
        return
    for entry in (entry for entry in entries if not entry.name.startswith(".")):
        path = Path(entry.path)
        relative = path.relative_to(in_dir).as_posix()
        kind = entry_kind(path)
        if kind == "file":
            status = path.stat()
            files.append(Source(path, relative, status.st_size, status.st_mtime_ns))
        elif kind == "folder":
            if recursive:
                scan_folder(path, in_dir, recursive, files, unusable)
        elif recursive or not kind.startswith("a link to a folder"):
            unusable.append(FileResult(relative, "skipped", kind))


def entry_kind(path: Path) -> str:
    """'file', 'folder', or why the entry cannot be converted."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a link that points back to itself"
        return "a broken link (its target is missing)" if path.is_symlink() else os_reason(error)
    if stat.S_ISDIR(mode):
        return "a link to a folder (not followed)" if path.is_symlink() else "folder"
    return "file" if stat.S_ISREG(mode) else "not a regular file (a pipe, socket or device)"


def is_supported(source: Source) -> bool:
    return is_image_path(source.path) or is_video_path(source.path)


def check_no_output_is_an_input(sources: Sequence[Source], out_dir: Path) -> None:
    """Refuse layouts where an output path would land on one of the inputs (e.g. IN_DIR inside OUT_DIR)."""
    inputs = {source.path.resolve() for source in sources}
    clash = next((s for s in sources if (out_dir / s.relative).resolve() in inputs), None)
    if clash is not None:
        raise BatchError(f"{out_dir / clash.relative}: would overwrite an input file; choose another output folder")


def earlier_results(files: Sequence[Source], out_dir: Path, settings: str) -> dict[str, FileResult]:
    """Entries needing no work: unsupported files, and files complete from an earlier run."""
    previous = read_manifest(out_dir / MANIFEST_NAME)
    results = {}
    for source in files:
        entry = previous.get(source.relative)
        if not is_supported(source):
            results[source.relative] = unsupported(source)
        elif is_complete(source, entry, out_dir, settings):
            results[source.relative] = replace(entry, status="skipped", reason=COMPLETE_REASON)
    return results


# ---------------------------------------------------------------- convert


def convert_dir(in_dir: Path, out_dir: Path, config: ProcessConfig, recursive: bool = False, jobs: int = 1,
                engine: ConvertFiles = convert_locally, hooks: RunHooks | None = None) -> BatchSummary:
    """Convert every image and video of IN_DIR into OUT_DIR with engine (pipeline.engines); see the module
    docstring for layout and resume. hooks (pipeline.hooks) hear of every file finished; cancelling stops as
    Ctrl-C does, with the finished files in the manifest."""
    started = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_folders(in_dir, out_dir, recursive)
    files, unusable = list_files(in_dir, recursive)
    check_no_output_is_an_input([source for source in files if is_supported(source)], out_dir)
    edit = parse_edit(config)  # option errors now, not once per file
    manifest, settings = out_dir / MANIFEST_NAME, settings_key(config)
    with output_folder(out_dir):
        results = {**earlier_results(files, out_dir, settings), **{entry.source: entry for entry in unusable}}
        todo = [source for source in files if source.relative not in results]
        record_results(engine(todo, out_dir, config, settings, jobs), len(todo), results, manifest, config, hooks)
    ordered = tuple(sorted(results.values(), key=lambda result: result.source))
    return BatchSummary(ordered, manifest, time.perf_counter() - started, edit.geometry is not None)


def record_results(finished: Iterator[FileResult], total: int, results: dict[str, FileResult], manifest: Path,
                   config: ProcessConfig, hooks: RunHooks | None = None) -> None:
    """Each result into results and the manifest as it comes; on Ctrl-C or an engine's failure, what finished is
    recorded for the resume (nothing is written when nothing finished, or when the manifest itself failed)."""
    before = len(results)
    try:
        with contextlib.closing(finished):
            for result in progress(finished, total, config, hooks):
                results[result.source] = result
                write_manifest(manifest, results, config)
    except ManifestError:
        raise
    except BaseException:
        if len(results) > before:
            write_manifest(manifest, results, config)
        raise
    write_manifest(manifest, results, config)


def progress(results: Iterable[FileResult], total: int, config: ProcessConfig,
             hooks: RunHooks | None = None) -> Iterator[FileResult]:
    """results, advancing a tqdm bar (files) on stderr and telling hooks after each file is recorded."""
    from tqdm import tqdm

    with tqdm(total=total, unit="file", file=sys.stderr, disable=not config.progress or total == 0,
              dynamic_ncols=True, leave=False) as bar:
        for done, result in enumerate(results, start=1):
            yield result
            bar.update(1)
            if hooks is not None:
                hooks.advance(done, total)


def unusable_text(count: int) -> str:
    return f", {count} not a usable file or folder" if count else ""


def summary_lines(summary: BatchSummary) -> list[str]:
    """Counts (and the faces without geometry, when it was on), then one line per failed file."""
    counts = summary.counts
    head = (f"{len(summary.results)} file(s) in {summary.seconds:.1f} s: {counts['done']} done, "
            f"{counts['skipped']} skipped ({counts['complete']} already complete, {counts['unsupported']} of an "
            f"unsupported type{unusable_text(counts['unusable'])}), {counts['failed']} failed; "
            f"manifest: {summary.manifest}")
    faces = [without_geometry_text(summary.without_geometry)] if summary.geometry else []
    return [head] + faces + [f"failed: {result.source}: {result.reason}" for result in summary.failed]
