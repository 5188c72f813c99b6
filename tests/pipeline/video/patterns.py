"""Helpers of the video tests: real little videos made here (colour patterns, chosen pts, rotation, audio)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.video.codecs import EncoderConfig
from pipeline.video.decode import decode_video
from pipeline.video.encode import encode_video
from pipeline.video.probe import probe_video


RATE_2213 = Fraction(2213, 100)
TB_90K = Fraction(1, 90000)
BT709, MPEG = 1, 1
# Saturated patches: a YUV matrix mix-up (BT.601 vs BT.709) moves these by 10+ levels.
PATCHES_BGR = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (40, 40, 40)]
FAST = EncoderConfig(preset="ultrafast")


def pattern(width: int, height: int, index: int) -> np.ndarray:
    """Colour patches in a row plus a moving grey bar, so frames differ and colours are checkable."""
    image = np.zeros((height, width, 3), np.uint8)
    step = max(1, width // len(PATCHES_BGR))
    for k, colour in enumerate(PATCHES_BGR):
        image[:, k * step:(k + 1) * step] = colour
    image[(index * 3) % height, :] = 200
    return image


def even_pts(count: int, rate: Fraction = RATE_2213, time_base: Fraction = TB_90K) -> list[int]:
    return [round(i / rate / time_base) for i in range(count)]


def vfr_pts(count: int, time_base: Fraction = TB_90K) -> list[int]:
    """Irregular gaps (30 fps and 15 fps mixed), like phone recordings."""
    gaps = [3000, 6000, 3000, 3000, 6000]
    return [sum(gaps[j % len(gaps)] for j in range(i)) + 450 for i in range(count)]


def write_audio(container, stream, seconds: float, start: float = 0.0) -> None:
    rate, offset = stream.sample_rate, round(start * stream.sample_rate)
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    for first in range(0, len(samples), 1024):
        chunk = samples[first:first + 1024]
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, offset + first
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_video(path: Path, width: int = 64, height: int = 48, pts: list[int] | None = None,
               time_base: Fraction = TB_90K, rotation: int | None = None, audio: bool = True,
               codec: str = "libx264", pix_fmt: str = "yuv420p", tagged: bool = True,
               options: dict[str, str] | None = None, audio_start: float = 0.0) -> list[int]:
    """A real little video (aac stereo audio when asked); returns the pts written."""
    pts = pts if pts is not None else even_pts(8, time_base=time_base)
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream(codec, rate=RATE_2213, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = video.codec_context.time_base = time_base
        if tagged:
            for name in ("color_range", "colorspace", "color_primaries", "color_trc"):
                setattr(video.codec_context, name, BT709)
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100, layout="stereo") if audio else None
        for index, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(pattern(width, height, index), format="bgr24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=BT709 if tagged else None,
                                   dst_color_range=MPEG if tagged else None)
            frame.pts, frame.time_base = value, time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            write_audio(container, sound, float((pts[-1] - pts[0]) * time_base) + 0.1, audio_start)
    return pts


def audio_packets(path: Path) -> list[tuple[str, int, Fraction]]:
    """(codec, packet count, duration in seconds) for each audio stream."""
    with av.open(str(path)) as container:
        result = []
        for stream in container.streams.audio:
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            end = max(p.pts + p.duration for p in packets)
            result.append((stream.codec_context.name, len(packets), (end - packets[0].pts) * stream.time_base))
        return result


def pass_through(source: Path, output: Path, config: EncoderConfig = FAST):
    return encode_video(decode_video(source), source, output, config, probe_video(source))
