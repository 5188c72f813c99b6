"""What the workflows of process and convert share: a file's checks before any work, its default output path, the
result of one file and its summary line, and the warnings every workflow gives the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import ProcessConfig
from pipeline.edit import Models, stills_are_edited
from pipeline.errors import InputError, OutputError
from pipeline.files import check_input_file, check_output_path
from pipeline.images import image_format, is_image_path
from pipeline.schedule import Schedule
from pipeline.video.codecs import is_video_path, output_container

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResult:
    """What one process_video / process_image call did; stage_seconds holds each stage's busy time.
    faces_without_geometry: edited faces whose landmarks failed (the generator alone); None with geometry off."""

    output: Path
    kind: Literal["video", "image"]
    frames: int
    faces_found: int
    faces_edited: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    faces_without_geometry: int | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def process_result_line(result: ProcessResult) -> str:
    """One line: output, frames, faces, fps and seconds per stage, and with geometry on, the faces without it."""
    faces = f"{result.faces_edited} face(s) edited"
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.stage_seconds.items())
    line = (f"wrote {result.output}: {faces} in {result.seconds:.1f} s" if result.kind == "image" else
            f"wrote {result.output}: {result.frames} frames, {faces} in {result.seconds:.1f} s "
            f"({result.fps:.1f} fps); busy seconds: {stages}")
    if result.faces_without_geometry is None:
        return line
    return f"{line}; {without_geometry_text(result.faces_without_geometry)}"


def without_geometry_text(count: int) -> str:
    return f"{count} faces without geometry (generator alone)"


def default_output(input_path: Path, schedule: Schedule) -> Path:
    """INPUT's folder, <stem>_<the scheduled expressions in order of first use, joined by '-'>.<ext>."""
    label = "-".join(dict.fromkeys(segment.expression for segment in schedule.segments)) or "edit"
    return input_path.with_name(f"{input_path.stem}_{label}{input_path.suffix}")


def input_kind(path: Path) -> Literal["video", "image"]:
    """'video' or 'image' from the extension; anything else is an InputError naming the file."""
    if is_video_path(path):
        return "video"
    if is_image_path(path):
        return "image"
    raise InputError(f"{path}: unsupported file type {path.suffix!r} (expected a video or an image)")


def check_paths(input_path: Path, output: Path, kind: str) -> tuple[Path, Path]:
    """Input readable and of the right kind, output writable, of the same kind and not the input."""
    check_input_file(input_path)
    check_output_path(output, input_path)
    return check_output_kind(input_path, output, kind)


def check_output_kind(input_path: Path, output: Path, kind: str) -> tuple[Path, Path]:
    """The output of the input's kind, in a format it can be written in (the files themselves are checked where
    they are opened)."""
    if kind == "image" and not is_image_path(output):
        raise OutputError(f"{output}: an image's output must be an image file (e.g. {input_path.suffix or '.png'})")
    if kind == "image":
        image_format(output)
    else:
        output_container(output)
    return input_path, output


def geometry_count(models: Models, without_geometry: int) -> int | None:
    """The count of faces without geometry for a result: None when the run has no geometry at all."""
    return None if models.geometry is None else without_geometry


def warn_if_faceless(path: Path, faces_found: int, outcome: str) -> None:
    if faces_found == 0:
        log.warning("%s: no face found; %s", path, outcome)


def warn_if_stills_unedited(models: Models, config: ProcessConfig, subject: object) -> None:
    """A still image is one moment (0 s): say so when the expression schedule changes over time, and when it edits
    nothing there."""
    if models.schedule.is_timed:
        log.warning("%s: a still image is one moment: only the schedule's expression at 0 s applies", subject)
    if not stills_are_edited(models, config):
        log.warning("%s: expression %r at intensity %g edits nothing at 0 s, the only moment of a still image; "
                    "written unchanged", subject, config.expression, config.intensity)
