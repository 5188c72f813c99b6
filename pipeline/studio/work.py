"""What the studio's page asks for, done through the CLI's own workflows: uploads checked with process's readers,
previews through the same stages, renders through process_file and folders through convert_dir.

Models are loaded once per generator setting and reused; each request brings its own schedule and settings.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pipeline.batch import BatchSummary, convert_dir
from pipeline.config import DEFAULT_CONFIG, ProcessConfig
from pipeline.edit import Models, load_models
from pipeline.errors import InputError, describe_os_error
from pipeline.files import check_input_file
from pipeline.hooks import RunHooks
from pipeline.images import read_image
from pipeline.process import (
    RunCounts, blend_stage, decode_stage, face_stage, geometry_stage, process_file, synthesize_stage,
)
from pipeline.results import ProcessResult, default_output, input_kind
from pipeline.stills import process_image
from pipeline.schedule import parse_schedule
from pipeline.studio.settings import StudioSettings, studio_config
from pipeline.types import Frame, StreamInfo, VideoFrame
from pipeline.video.probe import probe_video

Kind = Literal["video", "image"]


@dataclass(frozen=True)
class Upload:
    """An uploaded file that passed process's checks: a photo (its upright BGR image) or a video (its probe)."""

    path: Path
    kind: Kind
    image: Frame | None = None
    info: StreamInfo | None = None

    def describe(self) -> str:
        """One line for the page: what the file is."""
        if self.image is not None:
            height, width = self.image.shape[:2]
            return f"{self.path.name}: photo, {width}x{height}"
        info = self.info
        audio = f", {len(info.audio)} audio stream(s)" if info.audio else ", no audio"
        return (f"{self.path.name}: video, {info.width}x{info.height}, {info.frames or '?'} frames, "
                f"{info.duration or 0:.1f} s at {float(info.fps):.2f} fps{audio}")


def error_line(error: BaseException) -> str:
    """The line the CLI prints for a user error or an OSError: 'error: <file>: <problem>'."""
    return f"error: {describe_os_error(error) if isinstance(error, OSError) else error}"


def check_upload(path: Path) -> Upload:
    """The file read as process reads it; a bad one raises the same InputError (or OSError)."""
    path = check_input_file(Path(path))
    kind = input_kind(path)
    if kind == "image":
        return Upload(path, kind, image=read_image(path)[0])
    return Upload(path, kind, info=probe_video(path))


class Studio:
    """The studio's state: the pipeline config file, where renders go, and the models of the last setting used."""

    def __init__(self, out_dir: Path, config_path: Path = DEFAULT_CONFIG):
        self.out_dir, self.config_path = Path(out_dir), Path(config_path)
        self.lock = threading.Lock()
        self.loaded: tuple[object, Models] | None = None
        self.renders = itertools.count(1)

    def config(self, settings: StudioSettings, kind: Kind) -> ProcessConfig:
        return studio_config(settings, kind, self.config_path)

    def models(self, config: ProcessConfig) -> Models:
        """Models for config: loaded once per generator, detector and geometry setting, with config's schedule."""
        schedule = parse_schedule(config.expression, config.fade)  # the schedule's errors before a slow load
        key = (config.synthesizer, config.detector, config.crop_size, config.image_pad)
        with self.lock:
            if self.loaded is None or self.loaded[0] != key:
                self.loaded = None  # the old models go before the new ones load
                self.loaded = (key, load_models(config))
            return replace(self.loaded[1], schedule=schedule)

    def preview_photo(self, upload: Upload, settings: StudioSettings, folder: Path) -> ProcessResult:
        """The edited photo, written by process's photo workflow to folder as PNG (lossless, for the page)."""
        config = self.config(settings, "image")
        return process_image(upload.path, Path(folder) / f"{upload.path.stem}_preview.png", config,
                             self.models(config))

    def preview_frame(self, upload: Upload, settings: StudioSettings, index: int) -> tuple[Frame, Frame]:
        """(before, after) upright BGR images of one video frame, edited by the video's own stages."""
        config = self.config(settings, "video")
        frame = read_frame(upload.path, upload.info, index)
        return frame.image, edit_frame(frame, upload.info, self.models(config), config)

    def render(self, upload: Upload, settings: StudioSettings, hooks: RunHooks) -> ProcessResult:
        """The whole file through process_file into a folder of its own under out_dir (removed when cancelled)."""
        config = self.config(settings, upload.kind)
        models = self.models(config)
        folder = self.out_dir / f"render-{next(self.renders)}"
        try:
            return process_file(upload.path, default_output(folder / upload.path.name, models.schedule), config,
                                models, hooks)
        finally:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a cancelled or failed render leaves nothing

    def convert(self, in_dir: Path, out_dir: Path, settings: StudioSettings, recursive: bool, jobs: int,
                hooks: RunHooks) -> BatchSummary:
        """convert on a folder of the server's disk, resumable as the CLI's (OUT_DIR/manifest.json)."""
        config = self.config(settings, "video")
        return convert_dir(Path(in_dir).expanduser(), Path(out_dir).expanduser(), config, recursive, jobs,
                           hooks=hooks)


def read_frame(path: Path, info: StreamInfo, index: int) -> VideoFrame:
    """Frame index of a video, upright, from the video's own decode stage."""
    with contextlib.closing(decode_stage(path, info.rotation)) as frames:
        frame = next(itertools.islice(frames, index, None), None)
    if frame is None:
        raise InputError(f"{path}: has no frame {index}")
    return frame


def edit_frame(frame: VideoFrame, info: StreamInfo, models: Models, config: ProcessConfig) -> Frame:
    """One upright frame through the video's stages (faces, geometry, synthesize, blend), as process_video runs
    them, without threads."""
    counts = RunCounts()
    jobs = face_stage([frame], models, config, info.start_time, counts)
    if models.geometry is not None:
        jobs = geometry_stage(jobs, models.geometry, config, counts)
    edited = synthesize_stage(jobs, models.synthesizer, config.batch_size)
    return next(iter(blend_stage(edited, models.mask, config, 0, counts))).image
