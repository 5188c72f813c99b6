"""Encoding processed frames back to a video with the source's timestamps, rotation (display matrix), colour tags
and audio; written to a temp file and renamed, so no partial file is ever left at the output path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.errors import OutputError
from pipeline.files import check_output_path
from pipeline.types import Frame, StreamInfo, VideoFrame
from pipeline.video.audio import AudioMuxer
from pipeline.video.codecs import EncodePlan, EncoderConfig, frame_ticks, next_pts, plan_encode
from pipeline.video.probe import UNSPECIFIED_TAGS, probe_video
from usgan.files import atomic_write

# AVCOL_SPC_* (stream tag) -> SWS_CS_* (swscale matrix) for the few that differ or that swscale knows.
SWS_COLORSPACE: dict[int, int] = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
MPEG_RANGE = 1


@dataclass(frozen=True)
class EncodeSummary:
    """What encode_video wrote."""

    output: Path
    frames: int
    codec: str
    pix_fmt: str
    audio_copied: int = 0
    audio_reencoded: int = 0


class NoFrames(Exception):
    """The frame iterator was empty; encode_video turns this into an OutputError naming the output."""


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


def check_encoder_frame(frame: VideoFrame, info: StreamInfo) -> None:
    """Raise ValueError unless the frame is uint8 BGR of the source's stored size."""
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
        check_encoder_frame(frame, info)
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
    return encode_checked(frames, source, output, config, info or probe_video(source))


def encode_checked(frames: Iterable[VideoFrame], source: Path, output: Path, config: EncoderConfig,
                   info: StreamInfo) -> EncodeSummary:
    """encode_video to an output its caller has checked already."""
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
