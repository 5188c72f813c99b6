"""The pipeline's shared vocabulary.

Images are numpy uint8 BGR (OpenCV/InsightFace convention) unless named otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
import numpy as np
from numpy.typing import NDArray

from pipeline.choices import (  # noqa: F401 - the closed sets are part of the vocabulary
    BACKENDS, BLEND_MODES, FACE_SELECTIONS, Backend, BlendMode, FaceSelection,
)

Frame = NDArray[np.uint8]
"""(H, W, 3) uint8 BGR image."""
BBox = NDArray[np.float32]
"""(4,) float32 x1, y1, x2, y2 in frame pixels."""
Landmarks5 = NDArray[np.float32]
"""(5, 2) float32: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right)."""
Affine = NDArray[np.float64]
"""(2, 3) float64 forward transform, frame pixels -> crop pixels."""
Mask = NDArray[np.float32]
"""(H, W) float32 in [0, 1]."""



@dataclass(frozen=True)
class Face:
    """One detected face in one frame."""

    bbox: BBox
    landmarks: Landmarks5
    score: float
    track_id: int = -1


@dataclass(frozen=True)
class VideoFrame:
    """A decoded frame with its timing. pts is in the stream's time_base; time is seconds."""

    index: int
    image: Frame
    pts: int | None
    time_base: Fraction
    time: float


@dataclass(frozen=True)
class AlignedCrop:
    """A face warped to the generator's square crop; affine maps frame pixels to crop pixels."""

    image: Frame
    affine: Affine
    face: Face


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream of a video file; duration in seconds (None when the container does not say)."""

    index: int
    codec: str
    channels: int
    sample_rate: int
    duration: float | None


@dataclass(frozen=True)
class StreamInfo:
    """What probe_video learns about a video file. width/height are the stored (not display-rotated) size.

    rotation is the display matrix's counter-clockwise angle in degrees (0 when absent): the upright picture is the
    stored one rotated by it. Colour tags are FFmpeg AVCOL_* values, None when unspecified. variable_rate: the
    average rate differs from the stream's base rate (frames are not evenly spaced).
    """

    path: Path
    container: str
    width: int
    height: int
    frames: int | None
    fps: Fraction
    time_base: Fraction
    start_time: float
    duration: float | None
    codec: str
    pix_fmt: str
    bit_depth: int
    rotation: int = 0
    display_matrix: tuple[int, ...] | None = None
    color_range: int | None = None
    colorspace: int | None = None
    color_primaries: int | None = None
    color_trc: int | None = None
    audio: tuple[AudioStreamInfo, ...] = ()
    variable_rate: bool = False
    truncated: bool = False


def check_frame(frame: Frame, name: str = "frame") -> None:
    """Raise ValueError unless frame is an (H, W, 3) uint8 image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"{name}: expected (H, W, 3) uint8 BGR, got {type(frame).__name__} {shape}")
