"""Streaming decode to BGR frames one at a time, and turning frames upright and back.

Pixels are never auto-rotated: frames come out as stored, and StreamInfo.rotation says how to turn them upright
(rotate_upright / rotate_stored). The writer restores the original display matrix, so players show the output the
way they showed the input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.errors import InputError
from pipeline.files import check_input_file
from pipeline.types import Frame, VideoFrame
from pipeline.video.probe import decoded_frames, open_input, video_stream

log = logging.getLogger(__name__)


def to_bgr(frame: av.VideoFrame, reformatter: VideoReformatter) -> Frame:
    """(H, W, 3) uint8 BGR; swscale picks the YUV matrix and range from the frame's own tags."""
    return np.ascontiguousarray(reformatter.reformat(frame, format="bgr24").to_ndarray())


def decode_video(path: Path) -> Iterator[VideoFrame]:
    """Yield the video's frames one at a time as BGR VideoFrames, in presentation order, with original pts."""
    yield from decode_checked(check_input_file(Path(path)))


def decode_checked(path: Path) -> Iterator[VideoFrame]:
    """decode_video of a file its caller has checked already."""
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
