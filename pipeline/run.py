"""The product workflow: decode -> faces -> synthesize -> blend -> encode, for one video or one still image.

Video stages run in their own threads joined by small bounded queues, so decoding, face tracking, the generator,
blending and encoding overlap and memory stays constant whatever the video's length. Frames keep their order (one
worker per stage). Any worker's exception stops every stage and is re-raised in the caller; Ctrl-C (in the main
thread, which encodes) leaves no file at the output path (encode_video writes a temp file and renames it).

Faces, synthesis and blending run on the upright picture (rotate_upright); frames are turned back to their stored
orientation before encoding, keeping index and pts, and the writer restores the display matrix.
Each stage's busy time (wall time minus waiting on its queues) is measured, so the slowest stage is visible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.blend import FaceEdit, blend_faces, build_face_mask
from pipeline.errors import InputError, OutputError, check_input_file, check_output_path
from pipeline.faces import DetectorConfig, FaceDetector, TrackerConfig, align_face, select_faces, track_faces
from pipeline.images import ImageMeta, image_format, is_image_path, read_image, write_image
from pipeline.schedule import Mix, Schedule, parse_schedule
from pipeline.synthesize import (
    TORCH_PRECISIONS, FaceSynthesizer, SynthesizerConfig, build_synthesizer, resolve_weights,
)
from pipeline.types import (
    BACKENDS, BLEND_MODES, FACE_SELECTIONS, AlignedCrop, BlendMode, Face, FaceSelection, Frame, Mask, StreamInfo,
    VideoFrame,
)
from pipeline.video import (
    VIDEO_CODECS, EncoderConfig, choose_encoder, codec_for_container, decode_video, encode_video, is_video_path,
    output_container, probe_video, rotate_stored, rotate_upright,
)
from usgan.config import ConfigError, flatten, load_config
from usgan.expressions import EXPRESSIONS, expression_index

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "default.yaml"
FAST_PRESET = DEFAULT_CONFIG.with_name("fast.yaml")
"""The `--fast` preset: a partial config whose keys override the base config (explicit options override both)."""
STAGES: tuple[str, ...] = ("decode", "detect", "align", "synthesize", "blend", "encode")
_POLL_S = 0.1  # how often a blocked queue wait checks whether the run was stopped
_JOIN_S = 10.0  # how long the caller waits for a stopped worker (one generator batch at most)


@dataclass(frozen=True)
class ProcessConfig:
    """Everything process/convert need; defaults in configs/pipeline/default.yaml, CLI options override.

    expression: a name or alias, "name:intensity", a schedule "happy@0-3,sad@3-6" (seconds) or a .json file.
    intensity scales the generator's change (0 = unchanged, 1 = its full edit), on top of the schedule's own.
    crop_size: aligned crop in pixels; the generator runs at its own size and only its change is upsampled.
    video_codec: "auto" (h264_nvenc with CUDA, else libx264) or one of pipeline.video.VIDEO_CODECS.
    image_pad: still images where no face is found are searched again padded by this fraction (tight face crops).
    """

    expression: str = "happy"
    intensity: float = 1.0
    fade: float = 0.0
    faces: FaceSelection = "all"
    crop_size: int = 256
    batch_size: int = 8
    blend: BlendMode = "seamless"
    clone_scale: float = 0.5
    image_pad: float = 0.5
    video_codec: str = "auto"
    queue_size: int = 8
    progress: bool = True
    synthesizer: SynthesizerConfig = SynthesizerConfig()
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    encoder: EncoderConfig = EncoderConfig()


@dataclass(frozen=True)
class ProcessResult:
    """What one process_video / process_image call did; stage_seconds holds each stage's busy time."""

    output: Path
    kind: Literal["video", "image"]
    frames: int
    faces_found: int
    faces_edited: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- config


def check_config(config: ProcessConfig, where: str = "config") -> ProcessConfig:
    """Raise ConfigError naming the first setting out of its range or closed set; returns config."""
    checks = [
        ("faces", config.faces in FACE_SELECTIONS, f"one of {', '.join(FACE_SELECTIONS)}"),
        ("blend", config.blend in BLEND_MODES, f"one of {', '.join(BLEND_MODES)}"),
        ("synthesizer.backend", config.synthesizer.backend in BACKENDS, f"one of {', '.join(BACKENDS)}"),
        ("synthesizer.precision", config.synthesizer.precision in TORCH_PRECISIONS,
         f"one of {', '.join(TORCH_PRECISIONS)}"),
        ("synthesizer.precision", config.synthesizer.precision != "bf16" or config.synthesizer.backend == "torch",
         "fp32 or auto with the onnx back-end (bf16 is torch-only; ONNX Runtime uses synthesizer.onnx.fp16 on GPUs)"),
        ("detector.input_size", 32 <= config.detector.input_size <= 4096, "in [32, 4096]"),
        ("video_codec", config.video_codec in ("auto", *VIDEO_CODECS), f"auto or one of {', '.join(VIDEO_CODECS)}"),
        ("intensity", 0.0 <= config.intensity <= 1.0, "in [0, 1]"),
        ("fade", config.fade >= 0.0, ">= 0 seconds"),
        ("crop_size", 32 <= config.crop_size <= 1024, "in [32, 1024]"),
        ("batch_size", config.batch_size >= 1, ">= 1"),
        ("clone_scale", 0.1 <= config.clone_scale <= 1.0, "in [0.1, 1]"),
        ("image_pad", 0.0 <= config.image_pad <= 2.0, "in [0, 2]"),
        ("queue_size", config.queue_size >= 1, ">= 1"),
        ("tracker.detect_every", config.tracker.detect_every >= 1, ">= 1"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{where}: {name} must be {expected}")
    return config


def load_process_config(path: Path | None = DEFAULT_CONFIG, overrides: dict[str, Any] | None = None,
                        preset: Path | None = None) -> ProcessConfig:
    """ProcessConfig from a YAML file (default: configs/pipeline/default.yaml), then a preset's keys (e.g.
    FAST_PRESET), then dotted-key overrides (None values leave the key to the file and preset)."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    merged = {**(preset_overrides(preset) if preset else {}), **given}
    config = load_config(ProcessConfig, path, merged)
    return check_config(config, str(path) if path else "ProcessConfig")


def preset_overrides(path: Path) -> dict[str, Any]:
    """A partial config YAML flattened to dotted keys ({'detector': {'input_size': 320}} -> 'detector.input_size')."""
    import yaml

    try:
        mapping = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read preset: {str(error).splitlines()[0]}") from error
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of config keys")
    return flatten(mapping)


def schedule_label(schedule: Schedule) -> str:
    """A file-name friendly label: the scheduled expressions in order of first use, joined by '-'."""
    names = dict.fromkeys(segment.expression for segment in schedule.segments)
    return "-".join(names) or "edit"


def default_output(input_path: Path, expression: str) -> Path:
    """INPUT's folder, <stem>_<expression label>.<ext>."""
    label = schedule_label(parse_schedule(expression))
    return input_path.with_name(f"{input_path.stem}_{label}{input_path.suffix}")


# ---------------------------------------------------------------- models


class FaceFinder:
    """The video detector, plus for still images a padded retry that finds tight face crops (built on demand)."""

    def __init__(self, config: DetectorConfig, image_pad: float):
        self.detector = FaceDetector(config)
        self._padded_config = replace(config, pad=image_pad)
        self._padded: FaceDetector | None = None

    def image_faces(self, image: Frame) -> list[Face]:
        """Faces in a still image: unpadded first (best for small faces), padded when nothing was found."""
        faces = self.detector.detect_faces(image)
        if faces or self._padded_config.pad == self.detector.config.pad:
            return faces
        if self._padded is None:
            self._padded = FaceDetector(self._padded_config)
        return self._padded.detect_faces(image)


@dataclass(frozen=True)
class Models:
    """Everything loaded once and reused across frames and files."""

    finder: FaceFinder
    synthesizer: FaceSynthesizer
    schedule: Schedule
    mask: Mask


def share_threads(config: ProcessConfig, cpus: int) -> ProcessConfig:
    """Fill automatic (0) thread counts: the generator gets all of `cpus`, the detector half of them.

    Both run at once in their own stage threads. With both libraries' defaults (all cores each) d18.mp4 ran at
    10.8 fps on the 2-core dev box, with one thread each at 14.5 fps. The generator is the heavier stage (4x the
    detector's time per frame at 64², 20x at 128²), so it gets the cores the detector leaves idle: with 2 generator
    threads and 1 detector thread d18.mp4 ran at 6.1 instead of 3.9 fps with the 128² default weights and 15.6
    instead of 13.1 fps with the 64² ones (2026-12-02, side by side).
    """
    every, half = max(1, cpus), max(1, cpus // 2)
    synthesizer, onnx = config.synthesizer, config.synthesizer.onnx
    return replace(
        config, detector=replace(config.detector, threads=config.detector.threads or half),
        synthesizer=replace(synthesizer, threads=synthesizer.threads or every,
                            onnx=replace(onnx, threads=onnx.threads or every)))


def load_models(config: ProcessConfig) -> Models:
    """Parse the schedule and load detector and generator (weights errors come before the slow loads)."""
    config = share_threads(config, os.cpu_count() or 1)
    schedule = parse_schedule(config.expression, config.fade)
    resolve_weights(config.synthesizer.weights)
    synthesizer = build_synthesizer(config.synthesizer)
    finder = FaceFinder(config.detector, config.image_pad)
    return Models(finder, synthesizer, schedule, build_face_mask(config.crop_size))


# ---------------------------------------------------------------- per-frame steps (shared by video and images)


@dataclass(frozen=True)
class FaceJob:
    """One frame's aligned faces and the target they are edited towards (target (7,) weights, intensity)."""

    frame: VideoFrame
    crops: tuple[AlignedCrop, ...]
    target: NDArray[np.float32]
    intensity: float
    faces_found: int


@dataclass(frozen=True)
class EditedFrame:
    """A frame and its faces' generator round trips, ready to blend."""

    frame: VideoFrame
    edits: tuple[FaceEdit, ...]


def mix_target(mix: Mix, intensity: float) -> tuple[NDArray[np.float32], float]:
    """(7,) target weights summing to 1 and the residual scale for a schedule mix (empty mix: scale 0)."""
    vector = np.zeros(len(EXPRESSIONS), np.float32)
    total = sum(weight for _, weight in mix)
    for name, weight in mix:
        vector[expression_index(name)] = weight / total
    return vector, float(min(1.0, total) * intensity)


def plan_faces(frame: VideoFrame, faces: Sequence[Face], mix: Mix, config: ProcessConfig) -> FaceJob:
    """Select and align a frame's faces for its scheduled target; none when nothing is scheduled."""
    target, intensity = mix_target(mix, config.intensity)
    chosen = select_faces(faces, config.faces) if intensity > 0 else []
    crops = tuple(align_face(frame.image, face, config.crop_size) for face in chosen)
    return FaceJob(frame, crops, target, intensity, len(faces))


def synthesize_jobs(jobs: Sequence[FaceJob], synthesizer: FaceSynthesizer, batch_size: int) -> list[EditedFrame]:
    """Run every crop of several frames through the generator in batches of batch_size; results per frame."""
    crops = [crop for job in jobs for crop in job.crops]
    targets = np.array([job.target for job in jobs for _ in job.crops], np.float32).reshape(-1, len(EXPRESSIONS))
    scales = np.array([job.intensity for job in jobs for _ in job.crops], np.float32)
    generated: list[Frame] = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack([crop.image for crop in crops[start:start + batch_size]])
        generated.extend(synthesizer.synthesize(batch, targets[start:start + batch_size],
                                                scales[start:start + batch_size]))
    edits = iter(FaceEdit(crop.image, image, crop.affine) for crop, image in zip(crops, generated))
    return [EditedFrame(job.frame, tuple(next(edits) for _ in job.crops)) for job in jobs]


def blend_frame(edited: EditedFrame, mask: Mask, config: ProcessConfig) -> Frame:
    """The frame with its edits pasted back (the frame itself when there are none)."""
    if not edited.edits:
        return edited.frame.image
    return blend_faces(edited.frame.image, edited.edits, mask, config.blend, config.clone_scale)


# ---------------------------------------------------------------- still images


def process_image(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None) -> ProcessResult:
    """Edit the faces of one still image and write it (format from output's extension, atomically)."""
    started = time.perf_counter()
    input_path, output = check_paths(Path(input_path), Path(output), "image")
    image, meta = read_image(input_path)
    models = models or load_models(config)
    frame = VideoFrame(0, image, None, Fraction(1), 0.0)
    job = plan_faces(frame, models.finder.image_faces(image), models.schedule.mix_at(0.0), config)
    edited = synthesize_jobs([job], models.synthesizer, config.batch_size)[0]
    write_image(output, blend_frame(edited, models.mask, config), meta)
    warn_if_faceless(input_path, job.faces_found, "written unchanged")
    seconds = time.perf_counter() - started
    return ProcessResult(output, "image", 1, job.faces_found, len(job.crops), seconds)


def warn_if_faceless(path: Path, faces_found: int, outcome: str) -> None:
    if faces_found == 0:
        log.warning("%s: no face found; %s", path, outcome)


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


def input_kind(path: Path) -> Literal["video", "image"]:
    """'video' or 'image' from the extension; anything else is an InputError naming the file."""
    if is_video_path(path):
        return "video"
    if is_image_path(path):
        return "image"
    raise InputError(f"{path}: unsupported file type {path.suffix!r} (expected a video or an image)")


def process_file(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None) -> ProcessResult:
    """process_video or process_image, chosen by INPUT's extension."""
    input_path = check_input_file(Path(input_path))
    if input_kind(input_path) == "video":
        return process_video(input_path, output, config, models)
    return process_image(input_path, output, config, models)


# ---------------------------------------------------------------- threads and bounded queues


class Stopped(Exception):
    """Raised inside a stage when another stage failed or the caller gave up; never reaches the user."""


_END = object()


class Channel:
    """A bounded FIFO between two stages; waits give up when `stop` is set and are timed for the stage report."""

    def __init__(self, size: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = stop
        self.put_wait = 0.0
        self.get_wait = 0.0

    def put(self, item: object) -> None:
        started = time.perf_counter()
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                self.queue.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self.put_wait += time.perf_counter() - started

    def __iter__(self) -> Iterator[Any]:
        while True:
            started = time.perf_counter()
            item = self._get()
            self.get_wait += time.perf_counter() - started
            if item is _END:
                return
            yield item

    def _get(self) -> object:
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue


class StageThread(threading.Thread):
    """Runs work(source) and puts every result into sink, then an end marker; records busy time and failures."""

    def __init__(self, name: str, work: Callable[[Iterable[Any]], Iterable[Any]], source: Iterable[Any],
                 sink: Channel, errors: list[BaseException]):
        super().__init__(name=f"usgan-{name}", daemon=True)  # daemon: a stuck worker never keeps the process alive
        self.stage, self.work, self.source, self.sink, self.errors = name, work, source, sink, errors
        self.busy = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        results: Iterator[Any] | None = None
        try:
            results = iter(self.work(self.source))
            for item in results:
                self.sink.put(item)
            self.sink.put(_END)
        except Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the caller, which re-raises it
            self.errors.append(error)
            self.sink.stop.set()
        finally:
            with contextlib.suppress(Exception):
                getattr(results, "close", lambda: None)()  # closes a stopped decoder's file at once
            waited = self.sink.put_wait + (self.source.get_wait if isinstance(self.source, Channel) else 0.0)
            self.busy = time.perf_counter() - started - waited


@dataclass
class RunCounts:
    """Per-run tallies; each field is written by one stage thread only and read after it has ended."""

    faces_found: int = 0
    faces_edited: int = 0
    align_seconds: float = 0.0


# ---------------------------------------------------------------- video stages


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


def synthesize_stage(jobs: Iterable[FaceJob], synthesizer: FaceSynthesizer, batch_size: int) -> Iterator[EditedFrame]:
    """Batch crops across consecutive frames (up to batch_size crops or frames), in order."""
    pending: list[FaceJob] = []
    crops = 0
    for job in jobs:
        pending.append(job)
        crops += len(job.crops)
        if crops >= batch_size or len(pending) >= batch_size:
            yield from synthesize_jobs(pending, synthesizer, batch_size)
            pending, crops = [], 0
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
                    name: str) -> Iterator[VideoFrame]:
    """frames, advancing a tqdm bar on stderr (frames, fps, ETA)."""
    from tqdm import tqdm

    with tqdm(total=total, unit="frame", desc=name, file=sys.stderr, disable=not config.progress,
              dynamic_ncols=True, leave=False) as bar:
        for frame in frames:
            yield frame
            bar.update(1)


def process_video(input_path: Path, output: Path, config: ProcessConfig, models: Models | None = None) -> ProcessResult:
    """Edit every scheduled face of a video and encode it to output with the input's timing, rotation and audio."""
    started = time.perf_counter()
    input_path, output = check_paths(Path(input_path), Path(output), "video")
    info = probe_video(input_path)
    encoder = encoder_config(config, output)
    models = models or load_models(config)
    counts, stop, errors = RunCounts(), threading.Event(), []
    threads, frames = video_stages(input_path, info, models, config, counts, Stages(stop, errors))
    encode_started = time.perf_counter()
    summary = run_threads(threads, stop, errors, lambda: encode_video(
        progress_frames(frames, info.frames, config, input_path.name), input_path, output, encoder, info))
    encode_busy = time.perf_counter() - encode_started - frames.get_wait
    warn_if_faceless(input_path, counts.faces_found, "the output is the input re-encoded")
    return ProcessResult(output, "video", summary.frames, counts.faces_found, counts.faces_edited,
                         time.perf_counter() - started, stage_times(threads, counts, encode_busy))


@dataclass(frozen=True)
class Stages:
    """What every stage thread of one run shares: the stop signal and the list its errors go to."""

    stop: threading.Event
    errors: list[BaseException]


def video_stages(input_path: Path, info: StreamInfo, models: Models, config: ProcessConfig, counts: RunCounts,
                 shared: Stages) -> tuple[list[StageThread], Channel]:
    """The decode, detect, synthesize and blend threads (not started) and the channel of finished frames."""
    channels = [Channel(config.queue_size, shared.stop) for _ in range(4)]
    works: list[Callable[[Iterable[Any]], Iterable[Any]]] = [
        lambda _: decode_stage(input_path, info.rotation),
        lambda frames: face_stage(frames, models, config, info.start_time, counts),
        lambda jobs: synthesize_stage(jobs, models.synthesizer, config.batch_size),
        lambda edited: blend_stage(edited, models.mask, config, info.rotation, counts),
    ]
    sources: list[Iterable[Any]] = [(), *channels[:3]]
    threads = [StageThread(name, work, source, sink, shared.errors)
               for name, work, source, sink in zip(("decode", "detect", "synthesize", "blend"), works, sources,
                                                   channels)]
    return threads, channels[3]


def run_threads(threads: Sequence[StageThread], stop: threading.Event, errors: list[BaseException],
                consume: Callable[[], Any]) -> Any:
    """Start the stage threads, run consume() here, and always stop and join them; a worker's error wins."""
    for thread in threads:
        thread.start()
    try:
        return consume()
    except Stopped:
        pass  # a worker failed; its error is raised below
    finally:
        stop.set()
        for thread in threads:
            thread.join(_JOIN_S)
        if errors:
            raise errors[0]
    raise RuntimeError("pipeline stopped without an error")  # unreachable: Stopped only follows a worker error


# ---------------------------------------------------------------- many still images (convert)


@dataclass(frozen=True)
class ImageTask:
    """One still image on its way through the stages; the first stage that fails on it sets error, later ones pass
    it on untouched (one bad file must not stop the others)."""

    index: int
    source: Path
    output: Path
    started: float
    image: Frame | None = None
    meta: ImageMeta | None = None
    job: FaceJob | None = None
    edited: EditedFrame | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class ImageOutcome:
    """One image of process_images: its result, or the error that stopped it."""

    source: Path
    result: ProcessResult | None = None
    error: Exception | None = None


def attempt(task: ImageTask, step: Callable[[], dict[str, Any]]) -> ImageTask:
    """task with the fields step() returns, or with the error it raised; a task that already failed is passed on."""
    if task.error is not None:
        return task
    try:
        return replace(task, **step())
    except Exception as error:  # noqa: BLE001 - recorded on the task and reported by the caller, file by file
        return replace(task, error=error)


def read_tasks(pairs: Iterable[tuple[Path, Path]]) -> Iterator[ImageTask]:
    """(input, output) pairs as tasks holding the decoded image and its metadata."""
    for index, (source, output) in enumerate(pairs):
        task = ImageTask(index, Path(source), Path(output), time.perf_counter())
        yield attempt(task, lambda: read_task(task))


def read_task(task: ImageTask) -> dict[str, Any]:
    source, output = check_paths(task.source, task.output, "image")
    image, meta = read_image(source)
    return {"image": image, "meta": meta}


def plan_tasks(tasks: Iterable[ImageTask], models: Models, config: ProcessConfig) -> Iterator[ImageTask]:
    """Find and align each image's faces (still-image detection: padded retry for tight crops)."""
    for task in tasks:
        frame = VideoFrame(task.index, task.image, None, Fraction(1), 0.0)
        yield attempt(task, lambda: {"job": plan_faces(frame, models.finder.image_faces(frame.image),
                                                       models.schedule.mix_at(0.0), config)})


def synthesize_tasks(tasks: Iterable[ImageTask], synthesizer: FaceSynthesizer, batch_size: int) -> Iterator[ImageTask]:
    """Batch crops across consecutive images (up to batch_size crops or images), in order."""
    pending: list[ImageTask] = []
    crops = 0
    for task in tasks:
        pending.append(task)
        crops += len(task.job.crops) if task.job else 0
        if crops >= batch_size or len(pending) >= batch_size:
            yield from synthesize_pending(pending, synthesizer, batch_size)
            pending, crops = [], 0
    yield from synthesize_pending(pending, synthesizer, batch_size)


def synthesize_pending(tasks: Sequence[ImageTask], synthesizer: FaceSynthesizer, batch_size: int) -> list[ImageTask]:
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
                           time.perf_counter() - task.started)
    return ImageOutcome(task.source, result)


def write_task(task: ImageTask, models: Models, config: ProcessConfig) -> dict[str, Any]:
    write_image(task.output, blend_frame(task.edited, models.mask, config), task.meta)
    return {}


def process_images(pairs: Sequence[tuple[Path, Path]], config: ProcessConfig,
                   models: Models | None = None) -> Iterator[ImageOutcome]:
    """Edit many still images (input, output), in order, with overlapping stages like a video's: read, faces and
    the generator (batched across images) in threads, blend and write here. A bad image gives an outcome with its
    error and the others go on; result.seconds is each image's time from read to written (the stages overlap)."""
    models = models or load_models(config)
    stop, errors = threading.Event(), []
    # queue_size (>= batch_size by default) images between stages: the generator finds a full batch waiting and can
    # hand all of it on without waiting for the writer; with 2 it waited on both sides (1.0 core busy of 2).
    channels = [Channel(max(config.queue_size, config.batch_size), stop) for _ in range(3)]
    works: list[Callable[[Iterable[Any]], Iterable[Any]]] = [
        lambda _: read_tasks(pairs),
        lambda tasks: plan_tasks(tasks, models, config),
        lambda tasks: synthesize_tasks(tasks, models.synthesizer, config.batch_size),
    ]
    threads = [StageThread(name, work, source, sink, errors) for name, work, source, sink in
               zip(("read", "faces", "synthesize"), works, [(), *channels[:2]], channels)]
    for thread in threads:
        thread.start()
    try:
        for task in channels[2]:
            yield finish_task(task, models, config)
    except Stopped:
        pass  # a worker failed outside any one image; raised below
    finally:
        stop.set()
        for thread in threads:
            thread.join(_JOIN_S)
    if errors:
        raise errors[0]


def stage_times(threads: Sequence[StageThread], counts: RunCounts, encode_busy: float) -> dict[str, float]:
    """Busy seconds per stage; the face thread's time is split into detect(+track) and align."""
    times = {thread.stage: thread.busy for thread in threads}
    times["detect"] = max(0.0, times["detect"] - counts.align_seconds)
    times["align"] = counts.align_seconds
    times["encode"] = encode_busy
    return {name: times[name] for name in STAGES}


def format_summary(result: ProcessResult) -> str:
    """One line: output, frames, faces, fps and seconds per stage."""
    faces = f"{result.faces_edited} face(s) edited"
    if result.kind == "image":
        return f"wrote {result.output}: {faces} in {result.seconds:.1f} s"
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.stage_seconds.items())
    return (f"wrote {result.output}: {result.frames} frames, {faces} in {result.seconds:.1f} s "
            f"({result.fps:.1f} fps); busy seconds: {stages}")
