"""prepare-data: detect, align (with pipeline.faces.align.align_face, the one aligner) and index a training set.

Output layout (the aligned-crop folder format that usgan.dataset reads):
  OUT/<size>/<expression>/<stem>.png     aligned size x size crops, canonical expression names
  OUT/<size>/index.csv                   path,identity,expression,source  (path relative to OUT/<size>)
  OUT/skipped.csv                        file,reason  (file relative to SRC)
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2

from pipeline.faces.align import align_face, select_faces
from pipeline.faces.detector import DetectorConfig, FaceDetector
from usgan.files import atomic_write
from usgan.errors import UserError
from usgan.expressions import Expression, UnknownExpressionError, parse_expression

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# TFEID's expression letter, the 5th character of PPTVxNN.jpg.
TFEID_CODES: dict[str, Expression] = {
    "a": "neutral",
    "b": "happy",
    "c": "sad",
    "d": "angry",
    "e": "disgusted",
    "f": "fearful",
    "g": "surprised",
}
INDEX_COLUMNS = ("path", "identity", "expression", "source")


class PrepareError(UserError):
    """A source or output folder that prepare-data cannot use."""


@dataclass(frozen=True)
class PrepareConfig:
    """What prepare-data writes and how it detects faces (pad > 0 finds faces in tight crops)."""

    sizes: tuple[int, ...] = (128,)
    jobs: int = 1
    detector: DetectorConfig = DetectorConfig(pad=0.5)


@dataclass(frozen=True)
class SourceImage:
    """One labelled input image; source is its path relative to SRC, identity '' when unknown."""

    path: Path
    source: str
    identity: str
    expression: Expression

    @property
    def output_name(self) -> str:
        """Where its crop goes, relative to OUT/<size> (the same for every size)."""
        return f"{self.expression}/{Path(self.source).stem}.png"


@dataclass(frozen=True)
class Skipped:
    """An input that produced no crop, and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class PrepareSummary:
    """What a prepare-data run produced: crops per expression, reused outputs, skipped inputs."""

    counts: dict[str, int]
    skipped: tuple[Skipped, ...]
    reused: int
    sizes: tuple[int, ...]
    seconds: float


# ---------------------------------------------------------------- listing the source


def parse_tfeid_name(name: str) -> tuple[str, Expression] | str:
    """(identity, expression) from a TFEID file name PPTVxNN.ext, or the reason it carries no label."""
    stem = Path(name).stem
    if len(stem) != 7 or not stem[:4].isdigit():
        return "not a TFEID file name (PPTVxNN)"
    code = stem[4].lower()
    if code.isdigit():
        return "unlabelled"
    if code not in TFEID_CODES:
        return f"unknown TFEID expression code {stem[4]!r}"
    return stem[:2], TFEID_CODES[code]


def _tfeid_item(path: Path, src: Path) -> SourceImage | Skipped:
    parsed = parse_tfeid_name(path.name)
    source = path.relative_to(src).as_posix()
    if isinstance(parsed, str):
        return Skipped(source, parsed)
    return SourceImage(path, source, parsed[0], parsed[1])


def person_from_name(path: Path) -> str:
    """The person of a photo named PERSON_REST.ext (e.g. the London set's 001_03.jpg), else '' (unknown)."""
    person, sep, rest = path.stem.partition("_")
    return person if sep and person.isalnum() and rest else ""


def _folder_items(folder: Path, src: Path) -> list[SourceImage | Skipped]:
    """Images of a folder named after an expression; a file named PERSON_REST.ext names its person."""
    try:
        expression = parse_expression(folder.name)
    except UnknownExpressionError:
        reason = f"folder {folder.name!r} is not an expression"
        return [Skipped(p.relative_to(src).as_posix(), reason) for p in _files(folder)]
    return [
        SourceImage(p, p.relative_to(src).as_posix(), person_from_name(p), expression) if _is_image(p)
        else Skipped(p.relative_to(src).as_posix(), "not an image file")
        for p in _files(folder)
    ]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_training_images(src: Path, prefix: str = "") -> list[SourceImage | Skipped]:
    """Every file of SRC as a labelled image or a skip: TFEID names at the top, expression-named subfolders below.
    prefix goes before each source path (several sources in one output)."""
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    items: list[SourceImage | Skipped] = []
    for path in _files(src):
        items.append(_tfeid_item(path, src) if _is_image(path) else Skipped(path.name, "not an image file"))
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items.extend(_folder_items(folder, src))
    if prefix:
        items = [replace(item, source=f"{prefix}/{item.source}") if isinstance(item, SourceImage)
                 else replace(item, file=f"{prefix}/{item.file}") for item in items]
    return items


def list_sources(sources: Sequence[Path]) -> list[SourceImage | Skipped]:
    """The images of every source folder; with several, source paths start with their folder's name."""
    several = len(sources) > 1
    items = [item for src in sources for item in list_training_images(src, src.resolve().name if several else "")]
    return _drop_duplicate_outputs(items)


def _drop_duplicate_outputs(items: list[SourceImage | Skipped]) -> list[SourceImage | Skipped]:
    """Two sources that would write the same crop (e.g. happy/a.jpg and joy/a.png): keep the first."""
    seen: set[str] = set()
    result: list[SourceImage | Skipped] = []
    for item in items:
        if isinstance(item, SourceImage):
            name = item.output_name
            if name in seen:
                item = Skipped(item.source, f"duplicate output name {name}")
            seen.add(name)
        result.append(item)
    return result


# ---------------------------------------------------------------- aligning


def _write_png(path: Path, image) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))


def _outputs_exist(item: SourceImage, out: Path, sizes: tuple[int, ...]) -> bool:
    return all((out / str(size) / item.output_name).is_file() for size in sizes)


def align_source(item: SourceImage, detector: FaceDetector, out: Path, sizes: tuple[int, ...]) -> str | None:
    """Detect the largest face in one image and write its crops; returns a skip reason, or None on success."""
    image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable image"
    faces = select_faces(detector.detect_faces(image), "largest")
    if not faces:
        return "no face detected"
    for size in sizes:
        _write_png(out / str(size) / item.output_name, align_face(image, faces[0], size).image)
    return None


def _align_batch(items: list[SourceImage], config: PrepareConfig, out: Path) -> list[str | None]:
    """Align a batch with one detector (one per worker process: ORT sessions are not shared across processes)."""
    detector = FaceDetector(config.detector)
    return [align_source(item, detector, out, config.sizes) for item in items]


def _align_all(items: list[SourceImage], config: PrepareConfig, out: Path) -> list[str | None]:
    if not items:
        return []
    if config.jobs <= 1 or len(items) < 2:
        return _align_batch(items, config, out)
    from joblib import Parallel, delayed

    # One ORT thread per worker: the workers themselves are the parallelism.
    worker = PrepareConfig(config.sizes, 1, replace(config.detector, threads=1))
    batches = [items[i :: config.jobs] for i in range(config.jobs)]
    results = Parallel(n_jobs=config.jobs)(delayed(_align_batch)(batch, worker, out) for batch in batches)
    reasons: dict[str, str | None] = {}
    for batch, result in zip(batches, results):
        reasons.update({item.source: reason for item, reason in zip(batch, result)})
    return [reasons[item.source] for item in items]


# ---------------------------------------------------------------- indexes


def _csv_text(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_indexes(out: Path, sizes: tuple[int, ...], done: list[SourceImage], skipped: list[Skipped]) -> None:
    """Write OUT/<size>/index.csv for every size and OUT/skipped.csv, each atomically."""
    for size in sizes:
        rows = [(item.output_name, item.identity, item.expression, item.source) for item in done]
        text = _csv_text(INDEX_COLUMNS, rows)
        atomic_write(out / str(size) / "index.csv", lambda tmp, text=text: tmp.write_text(text))
    text = _csv_text(("file", "reason"), [(s.file, s.reason) for s in skipped])
    atomic_write(out / "skipped.csv", lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------- the command


def _check_folders(src: Path, out: Path) -> None:
    src, out = src.resolve(), out.resolve()
    if out == src or src in out.parents:
        raise PrepareError(f"{out}: output folder must not be inside the source folder {src}")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out}: exists and is not a folder")


def prepare_data(sources: Path | Sequence[Path], out: Path, config: PrepareConfig = PrepareConfig()) -> PrepareSummary:
    """Build an aligned training set from one or several source folders in OUT; existing crops are kept, so a
    re-run only does what is missing."""
    started = time.perf_counter()
    sources, out = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources], Path(out)
    for src in sources:
        _check_folders(src, out)
    items = list_sources(sources)
    skipped = [item for item in items if isinstance(item, Skipped)]
    images = [item for item in items if isinstance(item, SourceImage)]
    if not images:
        logger.warning("%s: no labelled face images found (TFEID names or one folder per expression)",
                       ", ".join(map(str, sources)))
    todo = [item for item in images if not _outputs_exist(item, out, config.sizes)]
    logger.info("%d labelled images, %d already aligned, %d to do", len(images), len(images) - len(todo), len(todo))
    failed = {item.source: reason for item, reason in zip(todo, _align_all(todo, config, out)) if reason}
    skipped += [Skipped(source, reason) for source, reason in failed.items()]
    done = sorted((item for item in images if item.source not in failed), key=lambda item: item.output_name)
    write_indexes(out, config.sizes, done, sorted(skipped, key=lambda s: s.file))
    counts = Counter(item.expression for item in done)
    return PrepareSummary(dict(sorted(counts.items())), tuple(sorted(skipped, key=lambda s: s.file)),
                          len(images) - len(todo), config.sizes, time.perf_counter() - started)


def prepare_summary_text(summary: PrepareSummary, out: Path) -> str:
    """The user-facing report: crops per expression and skipped inputs grouped by reason."""
    lines = [f"aligned {sum(summary.counts.values())} faces ({summary.reused} already done) at sizes "
             f"{', '.join(map(str, summary.sizes))} into {out} in {summary.seconds:.1f} s"]
    lines += [f"  {expression:<10} {count}" for expression, count in summary.counts.items()]
    lines.append(f"skipped {len(summary.skipped)} (listed in {Path(out) / 'skipped.csv'})")
    reasons = Counter(item.reason for item in summary.skipped)
    lines += [f"  {count:>4}  {reason}" for reason, count in reasons.most_common()]
    return "\n".join(lines)
