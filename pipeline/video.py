"""Streaming video I/O with PyAV: probe a file, decode it to BGR frames one at a time, and encode processed frames
back with the same timestamps, rotation (display matrix), colour tags and audio.

Pixels are never auto-rotated: frames come out as stored, and StreamInfo.rotation says how to turn them upright
(rotate_upright / rotate_stored). The writer restores the original display matrix, so players show the output the
way they showed the input.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, get_args

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.errors import InputError, OutputError, check_input_file, check_output_path
from pipeline.types import AudioStreamInfo, Frame, StreamInfo, VideoFrame
from usgan.files import atomic_write

log = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
"""Extensions treated as video inputs; PyAV may read more, these are the ones the CLI looks for."""
OUTPUT_CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
"""Output extension -> FFmpeg muxer."""

VideoCodec = Literal["libx264", "h264_nvenc", "libx265", "hevc_nvenc", "libvpx-vp9"]
VIDEO_CODECS: tuple[VideoCodec, ...] = get_args(VideoCodec)
WEBM_CODECS: frozenset[str] = frozenset({"libvpx-vp9"})
X264_PRESETS: tuple[str, ...] = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
NVENC_PRESETS: dict[str, str] = dict(zip(X264_PRESETS, ("p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p7")))
VP9_CPU_USED: dict[str, str] = dict(zip(X264_PRESETS, ("5", "5", "5", "4", "3", "2", "1", "0", "0")))

AUDIO_COPYABLE: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}),
    "mov": frozenset({"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"}),
    "matroska": None,  # Matroska holds practically every audio codec
    "webm": frozenset({"opus", "vorbis"}),
}
"""Container -> audio codecs it can take packet-for-packet (None: all)."""
AUDIO_FALLBACK_ENCODER: dict[str, str] = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus"}
OPUS_RATE = 48000  # libopus only takes 8/12/16/24/48 kHz; 48 kHz never loses bandwidth

# AVCOL_SPC_* (stream tag) -> SWS_CS_* (swscale matrix) for the few that differ or that swscale knows.
SWS_COLORSPACE: dict[int, int] = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
UNSPECIFIED_TAGS: dict[str, int] = {"color_range": 0, "colorspace": 2, "color_primaries": 2, "color_trc": 2}
MPEG_RANGE = 1


@dataclass(frozen=True)
class EncoderConfig:
    """Video encoder settings. crf/preset use x264 names; other encoders get the nearest equivalent.

    preset "veryfast": on few CPU cores the encoder must not become the bottleneck. It encodes ~3x faster than
    "medium" (scripts/bench_video.py on the 2-core dev box: 240 vs 82 fps at 480x480, 34 vs 12 fps at 720x1280)
    and at crf 18 stays visually lossless; file sizes were similar (veryfast even smaller at equal crf).
    pix_fmt None picks yuv420p (plays everywhere), or yuv444p when the frame size is odd (see choose_pix_fmt).
    """

    codec: VideoCodec = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    pix_fmt: str | None = None
    threads: int = 0  # 0: the encoder picks


@dataclass(frozen=True)
class EncodePlan:
    """Everything the writer decided before opening the output: muxer, encoder, pixel format, options."""

    container: str
    codec: str
    pix_fmt: str
    codec_options: dict[str, str] = field(default_factory=dict)
    muxer_options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodeSummary:
    """What encode_video wrote."""

    output: Path
    frames: int
    codec: str
    pix_fmt: str
    audio_copied: int = 0
    audio_reencoded: int = 0


# --- pure choices (unit-tested without hardware) ---


def is_video_path(path: Path) -> bool:
    """True when path has a video extension (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def output_container(output: Path) -> str:
    """FFmpeg muxer name for an output path, from its extension."""
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_CONTAINERS:
        raise OutputError(f"{output}: unknown video extension {suffix!r}; use one of {', '.join(OUTPUT_CONTAINERS)}")
    return OUTPUT_CONTAINERS[suffix]


def choose_encoder(cuda_available: bool, requested: str | None = None) -> VideoCodec:
    """The requested encoder, or NVENC H.264 when CUDA is present, else libx264."""
    if requested is None:
        return "h264_nvenc" if cuda_available else "libx264"
    if requested not in VIDEO_CODECS:
        raise OutputError(f"unknown video encoder {requested!r}; choose from {', '.join(VIDEO_CODECS)}")
    return requested  # type: ignore[return-value]


def codec_for_container(codec: str, container: str) -> str:
    """WebM only takes VP8/VP9/AV1, so H.264/H.265 requests become VP9 there."""
    if container == "webm" and codec not in WEBM_CODECS:
        return "libvpx-vp9"
    return codec


def choose_pix_fmt(width: int, height: int, requested: str | None = None) -> str:
    """yuv420p by default; for odd sizes the 4:4:4 variant, so the exact size is kept without colour fringes.

    H.264/H.265 encoders refuse odd sizes with subsampled chroma, and where VP9 takes them, swscale resamples the
    ceil(w/2)-wide chroma plane inexactly (fringes of 100+ levels at colour edges on a 65-pixel-wide frame).
    """
    pix_fmt = requested or "yuv420p"
    odd = width % 2 == 1 or height % 2 == 1
    if odd and ("420" in pix_fmt or "422" in pix_fmt):
        return pix_fmt.replace("420", "444").replace("422", "444")
    return pix_fmt


def build_encoder_options(codec: str, crf: int, preset: str, b_frames: bool = True) -> dict[str, str]:
    """AVOptions for the video encoder (strings, as FFmpeg takes them).

    b_frames=False for variable-rate sources: with reordering, the dts the encoder invents for uneven pts change
    the sample durations MP4 stores, and with them the stream's duration and average fps.
    """
    return {**codec_options(codec, crf, preset), **({} if b_frames else {"bf": "0"})}


def codec_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if preset not in X264_PRESETS:
        raise OutputError(f"unknown encoder preset {preset!r}; choose from {', '.join(X264_PRESETS)}")
    if codec == "libx264":
        return {"crf": str(crf), "preset": preset}
    if codec == "libx265":
        return {"crf": str(crf), "preset": preset, "x265-params": "log-level=error"}
    if codec in ("h264_nvenc", "hevc_nvenc"):
        # Constant-quality VBR: cq plays crf's role; b=0 lifts the default bitrate cap.
        return {"preset": NVENC_PRESETS[preset], "tune": "hq", "rc": "vbr", "cq": str(crf), "b": "0"}
    if codec == "libvpx-vp9":
        # b=0 with crf is VP9's constant-quality mode; row-mt uses all cores.
        return {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": VP9_CPU_USED[preset], "row-mt": "1"}
    raise OutputError(f"unknown video encoder {codec!r}; choose from {', '.join(VIDEO_CODECS)}")


def build_muxer_options(container: str) -> dict[str, str]:
    """MP4/MOV: put the index first so players can start before the whole file is read."""
    return {"movflags": "+faststart"} if container in ("mp4", "mov") else {}


def plan_encode(output: Path, info: StreamInfo, config: EncoderConfig) -> EncodePlan:
    """Decide muxer, encoder, pixel format and options for writing info-like frames to output."""
    container = output_container(output)
    codec = codec_for_container(config.codec, container)
    if codec != config.codec:
        log.warning("%s: %s cannot go into %s; encoding video with %s instead", output, config.codec, container, codec)
    pix_fmt = choose_pix_fmt(info.width, info.height, config.pix_fmt)
    if pix_fmt != (config.pix_fmt or "yuv420p"):
        log.warning("%s: odd frame size %dx%d; encoding %s (fewer players take it than yuv420p) to keep the size",
                    output, info.width, info.height, pix_fmt)
    options = build_encoder_options(codec, config.crf, config.preset, b_frames=not info.variable_rate)
    return EncodePlan(container, codec, pix_fmt, options, build_muxer_options(container))


def audio_action(container: str, codec: str) -> str:
    """'copy' when container takes codec packet-for-packet, else the encoder to re-encode with."""
    allowed = AUDIO_COPYABLE.get(container)
    return "copy" if allowed is None or codec in allowed else AUDIO_FALLBACK_ENCODER[container]


def next_pts(previous: int | None, frame: VideoFrame, time_base: Fraction, frame_ticks: int) -> int:
    """frame's pts in time_base, strictly after previous (encoders refuse repeats); guessed when missing."""
    if frame.pts is not None and frame.time_base == time_base:
        pts = frame.pts
    elif frame.pts is not None:
        pts = round(frame.pts * frame.time_base / time_base)
    else:
        pts = (previous + frame_ticks) if previous is not None else round(frame.time / time_base)
    if previous is not None and pts <= previous:
        log.debug("frame %d: pts %d not after %d; moved to %d", frame.index, pts, previous, previous + 1)
        pts = previous + 1
    return pts


def frame_ticks(info: StreamInfo) -> int:
    """One frame's duration at the average rate, in time_base ticks (at least 1)."""
    return max(1, round(1 / (info.fps * info.time_base))) if info.fps else 1


# --- rotation (pure) ---


def quarter_turns(rotation: int) -> int:
    """Counter-clockwise quarter turns for a display rotation in degrees (snapped to a multiple of 90)."""
    if rotation % 90:
        log.warning(
            "display rotation %d degrees is not a multiple of 90; using %d", rotation, 90 * round(rotation / 90))
    return round(rotation / 90) % 4


def rotate_upright(image: Frame, rotation: int) -> Frame:
    """The stored frame turned the way players show it (rotation = StreamInfo.rotation, CCW degrees)."""
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns(rotation)))


def rotate_stored(image: Frame, rotation: int) -> Frame:
    """Undo rotate_upright: an upright image back in the stored orientation, ready for the writer."""
    return np.ascontiguousarray(np.rot90(image, k=-quarter_turns(rotation)))


# --- reading ---


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[av.container.InputContainer]:
    """av.open for reading; any FFmpeg failure becomes a one-line InputError naming path."""
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as error:
        raise InputError(f"{path}: not a readable video file, or it is damaged/truncated ({error.strerror})") from error
    try:
        yield container
    finally:
        container.close()


def video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first real video stream; still images and audio-only files are refused."""
    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):
        raise InputError(f"{path}: is a still image ({name}), not a video")
    # Cover art is stored as a one-picture "video" stream; it is not the video.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise InputError(f"{path}: has no video stream")
    stream = streams[0]
    if stream.codec_context is None:
        raise InputError(f"{path}: no decoder for video codec {stream.codec.name if stream.codec else '?'}")
    return stream


def decoded_frames(container: av.container.InputContainer, stream, path: Path) -> Iterator[av.VideoFrame]:
    """container.decode(stream) with decoder errors turned into InputError."""
    iterator = container.decode(stream)
    while True:
        try:
            frame = next(iterator, None)
        except av.FFmpegError as error:
            raise InputError(f"{path}: cannot decode video ({error.strerror})") from error
        if frame is None:
            return
        yield frame


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's 3x3 display matrix (FFmpeg's 9 native int32), or None."""
    side = frame.side_data.get("DISPLAYMATRIX")
    return struct.unpack("=9i", bytes(side)) if side is not None else None


def color_tag(value: int, name: str) -> int | None:
    """None for FFmpeg's 'unspecified', else the AVCOL_* value."""
    value = int(value)
    return None if value == UNSPECIFIED_TAGS[name] else value


def payload_end(container: av.container.InputContainer) -> int:
    """Byte offset where the indexed samples end (0 when the container has no index)."""
    ends = (entry.pos + entry.size for stream in container.streams for entry in stream.index_entries)
    return max(ends, default=0)


def seconds(value: int | None, time_base: Fraction | None) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


def audio_infos(container: av.container.InputContainer) -> tuple[AudioStreamInfo, ...]:
    return tuple(
        AudioStreamInfo(s.index, s.codec_context.name if s.codec_context else s.codec.name, s.channels,
                        s.sample_rate, seconds(s.duration, s.time_base))
        for s in container.streams.audio
    )


def probe_video(path: Path) -> StreamInfo:
    """Read a video's stream info; decodes one frame for rotation and to prove the file is decodable."""
    path = check_input_file(Path(path))
    with open_input(path) as container:
        stream = video_stream(container, path)
        first = next(decoded_frames(container, stream, path), None)
        if first is None:
            raise InputError(f"{path}: contains no decodable video frame")
        info = stream_info(path, container, stream, first)
    if info.truncated:
        log.warning("%s: file is truncated; only the frames present will be decoded", path)
    return info


def stream_info(path: Path, container, stream, first: av.VideoFrame) -> StreamInfo:
    cc = stream.codec_context
    pix_fmt = first.format.name
    duration = seconds(stream.duration, stream.time_base)
    if duration is None and container.duration is not None:
        duration = container.duration / av.time_base
    return StreamInfo(
        path=path, container=container.format.name, width=first.width, height=first.height,
        frames=stream.frames or None, fps=Fraction(stream.average_rate or stream.guessed_rate or 0),
        time_base=Fraction(stream.time_base), start_time=seconds(stream.start_time, stream.time_base) or 0.0,
        duration=duration, codec=cc.name, pix_fmt=pix_fmt, bit_depth=first.format.components[0].bits,
        rotation=int(first.rotation), display_matrix=display_matrix(first),
        color_range=color_tag(first.color_range, "color_range"), colorspace=color_tag(first.colorspace, "colorspace"),
        color_primaries=color_tag(first.color_primaries, "color_primaries"),
        color_trc=color_tag(first.color_trc, "color_trc"),
        audio=audio_infos(container), variable_rate=bool(stream.base_rate and stream.average_rate != stream.base_rate),
        truncated=payload_end(container) > os.path.getsize(path),
    )


def to_bgr(frame: av.VideoFrame, reformatter: VideoReformatter) -> Frame:
    """(H, W, 3) uint8 BGR; swscale picks the YUV matrix and range from the frame's own tags."""
    return np.ascontiguousarray(reformatter.reformat(frame, format="bgr24").to_ndarray())


def decode_video(path: Path) -> Iterator[VideoFrame]:
    """Yield the video's frames one at a time as BGR VideoFrames, in presentation order, with original pts."""
    path = check_input_file(Path(path))
    with open_input(path) as container:
        stream = video_stream(container, path)
        stream.thread_type = "AUTO"  # frame + slice threads; the decoder holds only a few frames
        time_base = Fraction(stream.time_base)
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        reformatter = VideoReformatter()
        count = 0
        for count, frame in enumerate(decoded_frames(container, stream, path), start=1):
            time = float(frame.pts * time_base) if frame.pts is not None else (count - 1) / fps
            yield VideoFrame(count - 1, to_bgr(frame, reformatter), frame.pts, time_base, float(time))
        report_frame_count(path, count, stream.frames)


def report_frame_count(path: Path, decoded: int, declared: int) -> None:
    if decoded == 0:
        raise InputError(f"{path}: contains no decodable video frame")
    if declared and decoded < declared:
        log.warning("%s: decoded %d of the %d frames the file declares (truncated or damaged)", path, decoded, declared)


# --- writing ---


class NoFrames(Exception):
    """The frame iterator was empty; encode_video turns this into an OutputError naming the output."""


class AudioRoute:
    """Carries one input audio stream into the output, packet-for-packet."""

    reencoded = False

    def __init__(self, out: av.container.OutputContainer, template) -> None:
        self.out = out
        self.stream = out.add_stream_from_template(template)

    def mux(self, packet: av.Packet) -> None:
        if packet.size == 0 or packet.dts is None or packet.is_corrupt:
            return  # demux flush markers, and damaged packets the muxer would reject
        packet.stream = self.stream
        self.out.mux(packet)

    def flush(self) -> None:
        pass


class AudioTranscodeRoute(AudioRoute):
    """Decodes one input audio stream and re-encodes it for a container that cannot hold its codec."""

    reencoded = True

    def __init__(self, out: av.container.OutputContainer, template, encoder: str) -> None:
        self.out = out
        self.decoder = template
        rate = OPUS_RATE if encoder == "libopus" else template.sample_rate
        self.stream = out.add_stream(encoder, rate=rate, layout=template.layout.name)

    def mux(self, packet: av.Packet) -> None:
        if packet.size == 0 or packet.is_corrupt:
            return  # the demuxer's end marker would flush the decoder early; flush() does that
        # Decoded frames keep their pts and time base: the encoder's resampler carries them to the new rate, so
        # audio that starts late (or early) stays in sync with the video.
        for frame in self.decoder.decode(packet):
            self.out.mux(self.stream.encode(frame))

    def flush(self) -> None:
        for frame in self.decoder.decode(None):
            self.out.mux(self.stream.encode(frame))
        self.out.mux(self.stream.encode(None))


class AudioMuxer:
    """Feeds every audio stream of source into out, interleaved with the video by time (constant memory)."""

    def __init__(self, source: Path, out: av.container.OutputContainer, container: str) -> None:
        self.input = av.open(str(source), "r")
        self.routes: dict[int, AudioRoute] = {}
        try:
            for stream in self.input.streams.audio:
                self.routes[stream.index] = self.add_route(out, container, stream, source)
        except BaseException:
            self.input.close()
            raise
        self.packets = self.input.demux(*self.input.streams.audio) if self.routes else iter(())
        self.pending: av.Packet | None = None

    @staticmethod
    def add_route(out, container: str, stream, source: Path) -> AudioRoute:
        codec = stream.codec_context.name
        action = audio_action(container, codec)
        if action == "copy":
            return AudioRoute(out, stream)
        log.warning("%s: %s cannot hold %s audio (stream %d); re-encoding it with %s",
                    source, container, codec, stream.index, action)
        return AudioTranscodeRoute(out, stream, action)

    def mux_until(self, seconds: float) -> None:
        """Mux audio packets that start at or before `seconds`."""
        while True:
            packet = self.pending if self.pending is not None else next(self.packets, None)
            if packet is None:
                return
            start = packet.pts if packet.pts is not None else packet.dts
            if start is not None and packet.time_base and float(start * packet.time_base) > seconds:
                self.pending = packet
                return
            self.pending = None
            self.routes[packet.stream.index].mux(packet)

    def finish(self) -> None:
        self.mux_until(math.inf)
        for route in self.routes.values():
            route.flush()

    def close(self) -> None:
        self.input.close()


def add_video_stream(out: av.container.OutputContainer, info: StreamInfo, plan: EncodePlan, threads: int):
    """The output video stream: the input's time base, frame size, colour tags and display matrix."""
    stream = out.add_stream(plan.codec, rate=info.fps or None, options=plan.codec_options)
    stream.width, stream.height, stream.pix_fmt = info.width, info.height, plan.pix_fmt
    stream.time_base = info.time_base  # frames keep their original pts, so VFR and 22.13 fps stay in sync
    stream.codec_context.time_base = info.time_base
    stream.thread_count = threads
    for name in UNSPECIFIED_TAGS:
        value = getattr(info, name)
        if value is not None:
            setattr(stream.codec_context, name, value)
    if info.display_matrix is not None:
        stream.set_display_matrix(info.display_matrix)
    return stream


def check_frame(frame: VideoFrame, info: StreamInfo) -> None:
    image = frame.image
    expected = (info.height, info.width, 3)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != expected:
        got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        raise ValueError(f"frame {frame.index}: expected uint8 BGR of shape {expected} (stored orientation), got {got}")


def to_av_frame(image: Frame, pts: int, info: StreamInfo, plan: EncodePlan, reformatter: VideoReformatter):
    """BGR -> the encoder's YUV with the source's matrix and range, so colours survive the round trip."""
    rgb = av.VideoFrame.from_ndarray(image, format="bgr24")
    frame = reformatter.reformat(
        rgb, format=plan.pix_fmt, dst_colorspace=SWS_COLORSPACE.get(info.colorspace or 0),
        dst_color_range=info.color_range or MPEG_RANGE,
    )
    frame.pts, frame.time_base = pts, info.time_base
    return frame


def timed_frames(frames: Iterable[VideoFrame], info: StreamInfo) -> Iterator[tuple[VideoFrame, int, int]]:
    """(frame, pts, duration) in info.time_base ticks; duration is the gap to the next frame (one frame look-ahead),
    so the muxer gets the source's exact frame durations instead of 1/fps guesses."""
    ticks, previous, pts = frame_ticks(info), None, None
    for frame in frames:
        check_frame(frame, info)
        following = next_pts(pts, frame, info.time_base, ticks)
        if previous is not None:
            yield previous, pts, following - pts
        previous, pts = frame, following
    if previous is not None:
        yield previous, pts, last_duration(pts, info, ticks)


def last_duration(pts: int, info: StreamInfo, ticks: int) -> int:
    """The last frame lasts until the source's end when that is near (a full pass-through), else one frame."""
    if info.duration is None:
        return ticks
    end = round((Fraction(info.start_time) + Fraction(info.duration)) / info.time_base)
    return end - pts if 0 < end - pts <= 4 * ticks else ticks


def mux_video(out, stream, frames: Iterable[VideoFrame], audio: AudioMuxer, info: StreamInfo, plan: EncodePlan) -> int:
    """Encode frames in order with their own pts, muxing audio as video time advances; returns the frame count."""
    reformatter, durations, count = VideoReformatter(), {}, 0
    for frame, pts, duration in timed_frames(frames, info):
        durations[pts] = duration
        av_frame = to_av_frame(frame.image, pts, info, plan, reformatter)
        out.mux(with_durations(stream.encode(av_frame), durations))
        # Audio up to the current video time; the muxer's interleaver buffers only the encoder's short delay.
        audio.mux_until(float(pts * info.time_base))
        count += 1
    if count == 0:
        raise NoFrames()
    out.mux(with_durations(stream.encode(None), durations))
    return count


def with_durations(packets: list[av.Packet], durations: dict[int, int]) -> list[av.Packet]:
    """Give each packet its frame's display duration: encoders with B-frames (libx264) drop frame durations, and
    the muxer would otherwise end the stream one guessed 1/fps after the last frame."""
    for packet in packets:
        if packet.pts in durations:
            packet.duration = durations.pop(packet.pts)
    return packets


@contextlib.contextmanager
def open_output(path: Path, plan: EncodePlan) -> Iterator[av.container.OutputContainer]:
    """av.open for writing; on error the container is closed quietly so the original error propagates."""
    out = av.open(str(path), "w", format=plan.container, options=plan.muxer_options)
    try:
        yield out
    except BaseException:
        with contextlib.suppress(Exception):
            out.close()
        raise
    out.close()


def write_video(path: Path, frames: Iterable[VideoFrame], source: Path, info: StreamInfo, plan: EncodePlan,
                threads: int) -> tuple[int, AudioMuxer]:
    with open_output(path, plan) as out:
        stream = add_video_stream(out, info, plan, threads)
        audio = AudioMuxer(source, out, plan.container)
        try:
            count = mux_video(out, stream, frames, audio, info, plan)
            audio.finish()
        finally:
            audio.close()
    return count, audio


def encode_video(frames: Iterable[VideoFrame], source: Path, output: Path, config: EncoderConfig = EncoderConfig(),
                 info: StreamInfo | None = None) -> EncodeSummary:
    """Encode frames (stored orientation, source's size) to output with source's timing, rotation, colour and audio.

    Written to a temp file beside output and renamed at the end: on any error or Ctrl-C no file appears at output.
    """
    source, output = Path(source), Path(output)
    check_output_path(output, source)
    info = info or probe_video(source)
    plan = plan_encode(output, info, config)
    written: list[tuple[int, AudioMuxer]] = []
    try:
        atomic_write(output, lambda tmp: written.append(write_video(tmp, frames, source, info, plan, config.threads)))
    except NoFrames:
        raise OutputError(f"{output}: no video frames to write (nothing was written)") from None
    except (av.FFmpegError, OSError) as error:
        raise OutputError(f"{output}: cannot write video with {plan.codec} ({error})") from error
    count, audio = written[0]
    routes = audio.routes.values()
    copied = sum(not r.reencoded for r in routes)
    return EncodeSummary(output, count, plan.codec, plan.pix_fmt, copied, len(routes) - copied)
