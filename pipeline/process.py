"""The workflows of `process`: one video or one still image, chosen by the input's extension.

A video runs decode -> faces (-> geometry, when expression geometry is on) -> synthesize -> blend as a chain of stage
threads (pipeline.stages) and encodes the chain's results here, in the caller's thread: Ctrl-C there leaves no file
at the output path (encode_video writes a temp file and renames it). Faces, synthesis and blending see the upright
picture; frames are turned back to their stored orientation before encoding, keeping index and pts, and the writer
restores the display matrix.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pipeline.config import ProcessConfig, parse_edit
from pipeline.edit import (
    EditedFrame, FaceJob, Models, blend_frame, load_models, plan_faces, plan_still, stills_are_edited, synthesize_jobs,
    warp_jobs,
)
from pipeline.errors import InputError, OutputError
from pipeline.faces.tracking import track_faces
from pipeline.files import check_input_file, check_output_path
from pipeline.geometry import Geometry, LandmarkSmoother
from pipeline.hooks import RunHooks
from pipeline.images import image_format, is_image_path, read_image, write_image
from pipeline.schedule import Schedule
from pipeline.stages import StageChain, batched
from pipeline.synthesize import FaceSynthesizer
from pipeline.types import Mask, StreamInfo, VideoFrame
from pipeline.video.codecs import EncoderConfig, choose_encoder, codec_for_container, is_video_path, output_container
from pipeline.video.decode import decode_video, rotate_stored, rotate_upright
from pipeline.video.encode import encode_video
from pipeline.video.probe import probe_video

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("decode", "detect", "align", "geometry", "synthesize", "blend", "encode")
"""A video's stages; geometry only runs with expression geometry on."""


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


# ---------------------------------------------------------------- one file


def process_file(input_path: Path, output: Path | None, config: ProcessConfig,
                 models: Models | None = None, hooks: RunHooks | None = None) -> ProcessResult:
    """process_video or process_image, chosen by INPUT's extension; output None: default_output. hooks: a video's
    progress and cancel (pipeline.hooks)."""
    input_path = Path(input_path)
    edit = parse_edit(config) if models is None else None  # option errors before anything else
    output = Path(output) if output is not None else default_output(input_path, (models or edit).schedule)
    kind = input_kind(check_input_file(input_path))
    check_paths(input_path, output, kind)  # path errors before the slow model loads
    models = models or load_models(config, edit)
    if kind == "video":
        return process_video(input_path, output, config, models, hooks)
    return process_image(input_path, output, config, models)


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
    if kind == "image" and not is_image_path(output):
        raise OutputError(f"{output}: an image's output must be an image file (e.g. {input_path.suffix or '.png'})")
    if kind == "image":
        image_format(output)
    else:
        output_container(output)
    return input_path, output


# ---------------------------------------------------------------- one still image


def process_image(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None) -> ProcessResult:
    """Edit the faces of one still image and write it (format from output's extension, atomically)."""
    started = time.perf_counter()
    input_path, output = check_paths(Path(input_path), Path(output), "image")
    image, meta = read_image(input_path)
    models = models or load_models(config)
    warn_if_stills_unedited(models, config, input_path)
    job = plan_still(0, image, models, config)
    edited = synthesize_jobs([job], models.synthesizer, config.batch_size)[0]
    write_image(output, blend_frame(edited, models.mask, config), meta)
    warn_if_faceless(input_path, job.faces_found, "written unchanged")
    return ProcessResult(output, "image", 1, job.faces_found, len(job.crops), time.perf_counter() - started,
                         faces_without_geometry=geometry_count(models, job.without_geometry))


def geometry_count(models: Models, without_geometry: int) -> int | None:
    """The count of faces without geometry for a result: None when the run has no geometry at all."""
    return None if models.geometry is None else without_geometry


def warn_if_faceless(path: Path, faces_found: int, outcome: str) -> None:
    if faces_found == 0:
        log.warning("%s: no face found; %s", path, outcome)


def warn_if_stills_unedited(models: Models, config: ProcessConfig, subject: object) -> None:
    """A still image is one moment (0 s): say so when the expression schedule edits nothing there."""
    if not stills_are_edited(models, config):
        log.warning("%s: expression %r at intensity %g edits nothing at 0 s, the only moment of a still image; "
                    "written unchanged", subject, config.expression, config.intensity)


# ---------------------------------------------------------------- one video


@dataclass
class RunCounts:
    """Per-run tallies; each field is written by one stage thread only and read after it has ended."""

    faces_found: int = 0
    faces_edited: int = 0
    without_geometry: int = 0
    align_seconds: float = 0.0


def process_video(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None,
                  hooks: RunHooks | None = None) -> ProcessResult:
    """Edit every scheduled face of a video and encode it to output with the input's timing, rotation and audio;
    hooks (pipeline.hooks) hear of every frame encoded, and cancelling leaves no output."""
    started = time.perf_counter()
    input_path, output = check_paths(Path(input_path), Path(output), "video")
    info = probe_video(input_path)
    encoder = encoder_config(config, output)
    models = models or load_models(config)
    counts = RunCounts()
    chain = video_stages(input_path, info, models, config, counts)
    with chain.running() as frames:
        encode_started = time.perf_counter()
        summary = encode_video(progress_frames(frames, info.frames, config, input_path.name, hooks), input_path,
                               output, encoder, info)
    encode_busy = time.perf_counter() - encode_started - chain.consumer_wait()
    warn_if_faceless(input_path, counts.faces_found, "the output is the input re-encoded")
    if counts.faces_found and not counts.faces_edited:
        log.warning("%s: faces found but none edited: expression %r at intensity %g sets nothing during the video",
                    input_path, config.expression, config.intensity)
    return ProcessResult(output, "video", summary.frames, counts.faces_found, counts.faces_edited,
                         time.perf_counter() - started, stage_times(chain.busy_seconds(), counts, encode_busy),
                         geometry_count(models, counts.without_geometry))


def video_stages(input_path: Path, info: StreamInfo, models: Models, config: ProcessConfig,
                 counts: RunCounts) -> StageChain:
    """The decode, detect, synthesize and blend stages (not started); encoding consumes their results."""
    chain = StageChain(config.queue_size)
    chain.add("decode", lambda _: decode_stage(input_path, info.rotation))
    chain.add("detect", lambda frames: face_stage(frames, models, config, info.start_time, counts))
    if models.geometry is not None:
        chain.add("geometry", lambda jobs: geometry_stage(jobs, models.geometry, config, counts))
    chain.add("synthesize", lambda jobs: synthesize_stage(jobs, models.synthesizer, config.batch_size))
    chain.add("blend", lambda edited: blend_stage(edited, models.mask, config, info.rotation, counts))
    return chain


def decode_stage(path: Path, rotation: int) -> Iterator[VideoFrame]:
    """Decoded frames, turned upright."""
    for frame in decode_video(path):
        yield replace(frame, image=rotate_upright(frame.image, rotation)) if rotation else frame


def face_stage(frames: Iterable[VideoFrame], models: Models, config: ProcessConfig, start_s: float,
               counts: RunCounts) -> Iterator[FaceJob]:
    """Detect and track faces, then align those the schedule edits at each frame's time (video seconds)."""
    for frame, faces in track_faces(frames, models.finder.detector, config.tracker):
        started = time.perf_counter()
        job = plan_faces(frame, faces, models.schedule.mix_at(frame.time - start_s), config)
        counts.align_seconds += time.perf_counter() - started
        counts.faces_found += job.faces_found
        yield job


def geometry_stage(jobs: Iterable[FaceJob], geometry: Geometry, config: ProcessConfig,
                   counts: RunCounts) -> Iterator[FaceJob]:
    """Each face's warp field from its landmarks, smoothed per track (the landmark net batched across frames)."""
    smoother = LandmarkSmoother(config.tracker)
    for pending in batched(jobs, config.batch_size, lambda job: len(job.crops)):
        for job in warp_jobs(pending, geometry, smoother):
            counts.without_geometry += job.without_geometry
            yield job


def synthesize_stage(jobs: Iterable[FaceJob], synthesizer: FaceSynthesizer, batch_size: int) -> Iterator[EditedFrame]:
    """Batch crops across consecutive frames (up to batch_size crops or frames), in order."""
    for pending in batched(jobs, batch_size, lambda job: len(job.crops)):
        yield from synthesize_jobs(pending, synthesizer, batch_size)


def blend_stage(frames: Iterable[EditedFrame], mask: Mask, config: ProcessConfig, rotation: int,
                counts: RunCounts) -> Iterator[VideoFrame]:
    """Paste the edits back and return each frame to its stored orientation (same index and pts)."""
    for edited in frames:
        image = blend_frame(edited, mask, config)
        counts.faces_edited += len(edited.edits)
        yield replace(edited.frame, image=rotate_stored(image, rotation) if rotation else image)


def encoder_config(config: ProcessConfig, output: Path) -> EncoderConfig:
    """config.encoder with its codec resolved: "auto" is NVENC when CUDA and FFmpeg's nvenc are there, else
    libx264, or VP9 for WebM (quietly: only an explicit codec the container refuses is worth a warning)."""
    if config.video_codec != "auto":
        return replace(config.encoder, codec=choose_encoder(False, config.video_codec))
    import av
    import torch

    cuda = torch.cuda.is_available() and "h264_nvenc" in av.codecs_available
    codec = codec_for_container(choose_encoder(cuda), output_container(output))
    return replace(config.encoder, codec=codec)  # type: ignore[arg-type]


def progress_frames(frames: Iterable[VideoFrame], total: int | None, config: ProcessConfig,
                    name: str, hooks: RunHooks | None = None) -> Iterator[VideoFrame]:
    """frames, advancing a tqdm bar on stderr (frames, fps, ETA) and telling hooks after each frame is encoded."""
    from tqdm import tqdm

    with tqdm(total=total, unit="frame", desc=name, file=sys.stderr, disable=not config.progress,
              dynamic_ncols=True, leave=False) as bar:
        for done, frame in enumerate(frames, start=1):
            yield frame
            bar.update(1)
            if hooks is not None:
                hooks.advance(done, total)


def stage_times(busy: dict[str, float], counts: RunCounts, encode_busy: float) -> dict[str, float]:
    """Busy seconds per stage that ran; the face thread's time is split into detect(+track) and align."""
    times = {**busy, "detect": max(0.0, busy["detect"] - counts.align_seconds), "align": counts.align_seconds,
             "encode": encode_busy}
    return {name: times[name] for name in STAGES if name in times}
