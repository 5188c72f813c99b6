"""convert's OUT_DIR/manifest.json: what became of each file of IN_DIR, and whether a re-run can skip it.

Each entry holds a status: done (processed now), skipped (complete from an earlier run, or of an unsupported type)
or failed (with its one-line reason). A file counts as complete when its entry is done/skipped with the same
settings and the same input size and mtime, and its output exists; everything else is (re)done.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from pipeline.errors import OutputError, os_reason
from pipeline.config import ProcessConfig
from usgan.config import to_mapping
from usgan.files import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
Status = Literal["done", "skipped", "failed"]
COMPLETE: frozenset[str] = frozenset({"done", "skipped"})
COMPLETE_REASON = "complete from an earlier run"
UNSUPPORTED_REASON = "unsupported file type"


class ManifestError(OutputError):
    """OUT_DIR/manifest.json cannot be written; the message says what to do."""


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
    without_geometry: int = 0  # edited faces whose landmarks failed (the generator alone)


def settings_key(config: ProcessConfig) -> str:
    """A short hash of everything that changes outputs (not progress or queue sizes)."""
    mapping = to_mapping(replace(config, progress=False, queue_size=1))
    text = json.dumps(mapping, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(source: Source, settings: str) -> dict[str, object]:
    """The fields that tie a manifest entry to these settings and this very input."""
    return {"settings": settings, "size": source.size, "mtime_ns": source.mtime_ns}


def unsupported(source: Source) -> FileResult:
    return FileResult(source.relative, "skipped", UNSUPPORTED_REASON, size=source.size, mtime_ns=source.mtime_ns)


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
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as error:  # e.g. a full disk: the run stops here; the manifest on disk is the last one written
        raise ManifestError(f"{path}: cannot write it: {os_reason(error)}; the files it does not list are converted "
                            "again: free some space and run the same command again") from error


def is_complete(source: Source, previous: FileResult | None, out_dir: Path, settings: str) -> bool:
    """Done earlier with these settings from this very input, and the output is still there."""
    return (previous is not None and previous.status in COMPLETE and previous.settings == settings
            and previous.size == source.size and previous.mtime_ns == source.mtime_ns
            and (out_dir / source.relative).is_file())
