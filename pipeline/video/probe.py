"""What a video file holds: its stream info (size, timing, rotation, colour tags, audio), read with PyAV."""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from pipeline.errors import InputError
from pipeline.files import check_input_file
from pipeline.types import AudioStreamInfo, StreamInfo

log = logging.getLogger(__name__)

UNSPECIFIED_TAGS: dict[str, int] = {"color_range": 0, "colorspace": 2, "color_primaries": 2, "color_trc": 2}


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
    return probe_checked(check_input_file(Path(path)))


def probe_checked(path: Path) -> StreamInfo:
    """probe_video of a file its caller has checked already."""
    with open_input(path) as container:
        stream = video_stream(container, path)
        first = next(decoded_frames(container, stream, path), None)
        if first is None:
            raise InputError(f"{path}: contains no decodable video frame")
        info = stream_info(path, container, stream, first)
        subtitles = len(container.streams.subtitles)
    if subtitles:
        log.warning("%s: %d subtitle stream(s) are not carried to the output (video and audio are)", path, subtitles)
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
