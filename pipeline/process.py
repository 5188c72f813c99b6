"""The workflows of `process`: one video, or one still image (pipeline.stills), chosen by the input's extension.

A video runs decode -> faces (-> geometry, when expression geometry is on) -> synthesize -> blend as a chain of stage
threads (pipeline.stages) and encodes the chain's results here, in the caller's thread: Ctrl-C there leaves no file
at the output path (the encoder writes a temp file and renames it). Faces, synthesis and blending see the upright
picture; frames are turned back to their stored orientation before encoding, keeping index and pts, and the writer
restores the display matrix.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.config import ProcessConfig, parse_edit
from pipeline.edit import EditedFrame, FaceJob, Models, blend_frame, load_models, plan_faces, synthesize_jobs, warp_jobs
from pipeline.faces.tracking import track_faces
from pipeline.geometry import Geometry, LandmarkSmoother
from pipeline.results import (  # noqa: F401 - the workflows' shared vocabulary, also reached through this module
    ProcessResult, check_paths, default_output, geometry_count, input_kind, process_result_line, warn_if_faceless,
    without_geometry_text,
)
from pipeline.hooks import RunHooks
from pipeline.stages import StageChain, batched
from pipeline.stills import process_image
from pipeline.synthesize import FaceSynthesizer
from pipeline.types import Mask, StreamInfo, VideoFrame
from pipeline.video.codecs import EncoderConfig, choose_encoder, codec_for_container, output_container
from pipeline.video.decode import decode_checked, rotate_stored, rotate_upright
from pipeline.video.encode import encode_checked
from pipeline.video.probe import probe_checked

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("decode", "detect", "align", "geometry", "synthesize", "blend", "encode")
"""A video's stages; geometry only runs with expression geometry on."""


# ---------------------------------------------------------------- one file


def process_file(input_path: Path, output: Path | None, config: ProcessConfig,
                 models: Models | None = None, hooks: RunHooks | None = None) -> ProcessResult:
    """process_video or process_image, chosen by INPUT's extension; output None: default_output. hooks: a video's
    progress and cancel (pipeline.hooks)."""
    input_path = Path(input_path)
    edit = parse_edit(config) if models is None else None  # option errors before anything else
    output = Path(output) if output is not None else default_output(input_path, (models or edit).schedule)
    kind = input_kind(input_path)
    check_paths(input_path, output, kind)  # path errors before the slow model loads
    models = models or load_models(config, edit)
    if kind == "image":
        return process_image(input_path, output, config, models, checked=True)
    return run_video(input_path, output, config, models, hooks)


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
    input_path, output = check_paths(Path(input_path), Path(output), "video")
    return run_video(input_path, output, config, models or load_models(config), hooks)


def run_video(input_path: Path, output: Path, config: ProcessConfig, models: Models,
              hooks: RunHooks | None = None) -> ProcessResult:
    """process_video's work, on paths checked already."""
    started = time.perf_counter()
    info = probe_checked(input_path)  # the paths were checked once, by the caller
    encoder = encoder_config(config, output)
    counts = RunCounts()
    chain = video_stages(input_path, info, models, config, counts)
    with chain.running() as frames:
        encode_started = time.perf_counter()
        summary = encode_checked(progress_frames(frames, info.frames, config, input_path.name, hooks), input_path,
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
    for frame in decode_checked(path):
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
