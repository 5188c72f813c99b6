"""The encoder's choices, made before any file is opened and unit-tested without hardware: which extensions are
videos, which muxer and encoder an output gets, its pixel format, the encoder and muxer options, what happens to
audio the container cannot hold, and the output timestamps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
import av

from pipeline.choices import VIDEO_CODECS, X264_PRESETS, VideoCodec  # noqa: F401 - re-exported
from pipeline.errors import OutputError
from pipeline.types import StreamInfo, VideoFrame

log = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
"""Extensions treated as video inputs; PyAV may read more, these are the ones the CLI looks for."""
OUTPUT_CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
"""Output extension -> FFmpeg muxer."""

WEBM_CODECS: frozenset[str] = frozenset({"libvpx-vp9"})
FULL_CHROMA_CODECS: frozenset[str] = frozenset({"libx264", "libx265", "libvpx-vp9"})
"""Encoders that take yuv444p on every machine (H.264 High 4:4:4, HEVC 4:4:4, VP9 profile 1)."""
CHROMA_SAMPLES: dict[str, int] = {"4:4:4": 16, "4:2:2": 8, "4:2:0": 4, "4:1:1": 4}
"""Colour samples per 4x4 pixels, to compare subsamplings."""
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


@dataclass(frozen=True)
class EncoderConfig:
    """Video encoder settings. crf/preset use x264 names; other encoders get the nearest equivalent.

    preset "veryfast": on few CPU cores the encoder must not become the bottleneck; it encodes about 3x faster than
    "medium" and at crf 18 stays visually lossless at a similar file size.
    pix_fmt None: yuv420p, which plays everywhere; yuv444p when the input has full-resolution colour (4:4:4 or RGB)
    and the encoder takes it (FULL_CHROMA_CODECS), or when the frame size is odd (see choose_pix_fmt). Frames are
    edited in 8 bits, so 10-bit inputs are written 8-bit; whatever the output loses is logged as a warning.
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
    wanted = config.pix_fmt or default_pix_fmt(info.pix_fmt, codec)
    pix_fmt = choose_pix_fmt(info.width, info.height, wanted)
    if pix_fmt != wanted:
        log.warning("%s: odd frame size %dx%d; encoding %s (fewer players take it than yuv420p) to keep the size",
                    output, info.width, info.height, pix_fmt)
    loss = pix_fmt_loss(info.pix_fmt, pix_fmt)
    if loss:
        log.warning("%s: %s input written as %s: %s", info.path, info.pix_fmt, pix_fmt, loss)
    options = build_encoder_options(codec, config.crf, config.preset, b_frames=not info.variable_rate)
    return EncodePlan(container, codec, pix_fmt, options, build_muxer_options(container))


def default_pix_fmt(source_pix_fmt: str, codec: str) -> str:
    """yuv444p for a source with full-resolution colour (4:4:4 or RGB) when the encoder takes it, else yuv420p."""
    full = chroma_label(source_pix_fmt) == "4:4:4"
    return "yuv444p" if full and codec in FULL_CHROMA_CODECS else "yuv420p"


def chroma_label(pix_fmt: str) -> str | None:
    """'4:4:4', '4:2:2', '4:2:0' or '4:1:1' for a colour pixel format (RGB counts as 4:4:4); None for grey,
    palette or unknown formats."""
    try:
        video_format = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        return None
    if len(video_format.components) < 3:
        return None
    width, height = video_format.chroma_width(4), video_format.chroma_height(4)
    return {(4, 4): "4:4:4", (2, 4): "4:2:2", (2, 2): "4:2:0", (1, 4): "4:1:1"}.get((width, height))


def bit_depth(pix_fmt: str) -> int | None:
    """Bits per colour sample of a pixel format (alpha aside); None for unknown formats."""
    try:
        components = av.VideoFormat(pix_fmt).components
    except (ValueError, TypeError):
        return None
    return max((c.bits for c in components if not c.is_alpha), default=None)


def pix_fmt_loss(source: str, output: str) -> str | None:
    """What encoding a `source` video's frames as `output` loses (bit depth, colour resolution), or None."""
    lost = []
    source_bits, output_bits = bit_depth(source), bit_depth(output)
    if source_bits and output_bits and source_bits > min(output_bits, 8):
        lost.append(f"{source_bits}-bit samples become 8-bit (frames are edited in 8 bits)")
    source_chroma, output_chroma = chroma_label(source), chroma_label(output)
    if source_chroma and output_chroma and CHROMA_SAMPLES[output_chroma] < CHROMA_SAMPLES[source_chroma]:
        lost.append(f"{source_chroma} colour becomes {output_chroma} (set encoder.pix_fmt to choose)")
    return "; ".join(lost) or None


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
