"""Every closed set and numeric bound of process and convert, in one place.

The typed config (pipeline.config) checks its values against them and the CLI options (cli_options.py) offer them;
neither defines its own. Importing this module is cheap: no numpy, torch or click.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from usgan.providers import EXECUTION_PREFERENCES

Backend = Literal["torch", "onnx"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
BlendMode = Literal["seamless", "feather"]
BLEND_MODES: tuple[BlendMode, ...] = get_args(BlendMode)
FaceSelection = Literal["all", "largest"]
FACE_SELECTIONS: tuple[FaceSelection, ...] = get_args(FaceSelection)
TorchDevice = Literal["auto", "cpu", "cuda"]
TORCH_DEVICES: tuple[TorchDevice, ...] = get_args(TorchDevice)
TorchPrecision = Literal["fp32", "bf16", "auto"]  # auto: bf16 where it runs natively, else fp32
TORCH_PRECISIONS: tuple[TorchPrecision, ...] = get_args(TorchPrecision)
VideoCodec = Literal["libx264", "h264_nvenc", "libx265", "hevc_nvenc", "libvpx-vp9"]
VIDEO_CODECS: tuple[VideoCodec, ...] = get_args(VideoCodec)
X264_PRESETS: tuple[str, ...] = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = get_args(Engine)


@dataclass(frozen=True)
class Bound:
    """A numeric setting's kind and its inclusive range."""

    kind: type  # int or float
    low: float
    high: float = math.inf

    def admits(self, value: object) -> bool:
        """value is a number of this kind (an int is a float too; bools are neither), finite, within the range."""
        allowed = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            return False
        return math.isfinite(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """'a whole number in [32, 1024]', 'a finite number >= 0', ..."""
        noun = "a whole number" if self.kind is int else "a finite number"
        return f"{noun} >= {self.low:g}" if math.isinf(self.high) else f"{noun} in [{self.low:g}, {self.high:g}]"


CHOICES: dict[str, tuple[str, ...]] = {
    "faces": FACE_SELECTIONS,
    "blend": BLEND_MODES,
    "video_codec": ("auto", *VIDEO_CODECS),
    "synthesizer.backend": BACKENDS,
    "synthesizer.device": TORCH_DEVICES,
    "synthesizer.precision": TORCH_PRECISIONS,
    "synthesizer.onnx.preference": EXECUTION_PREFERENCES,
    "encoder.preset": X264_PRESETS,
}
"""Settings (dotted keys of ProcessConfig) with a closed set of values."""

BOUNDS: dict[str, Bound] = {
    "intensity": Bound(float, 0.0, 1.0),
    "fade": Bound(float, 0.0, 60.0),
    "crop_size": Bound(int, 32, 1024),
    "batch_size": Bound(int, 1, 512),
    "clone_scale": Bound(float, 0.1, 1.0),
    "image_pad": Bound(float, 0.0, 2.0),
    "queue_size": Bound(int, 1),
    "synthesizer.threads": Bound(int, 0, 1024),
    "synthesizer.onnx.threads": Bound(int, 0, 1024),
    "detector.input_size": Bound(int, 32, 4096),
    "detector.threshold": Bound(float, 0.05, 0.99),
    "detector.pad": Bound(float, 0.0, 2.0),
    "detector.threads": Bound(int, 0, 1024),
    "tracker.detect_every": Bound(int, 1, 100),
    "tracker.max_missed": Bound(int, 0),
    "tracker.min_iou": Bound(float, 0.0, 1.0),
    "encoder.crf": Bound(int, 0, 51),
    "encoder.threads": Bound(int, 0, 1024),
}
"""Numeric settings (dotted keys of ProcessConfig), bounds included."""
