"""Flicker: how much a processed video changes from frame to frame inside the faces, against its input."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.evaluation.sources import EvaluateError
from pipeline.faces.detector import FaceDetector
from pipeline.types import Face, Frame, Mask
from pipeline.video.decode import decode_video


@dataclass(frozen=True)
class Flicker:
    """Mean absolute frame-to-frame change inside the face region, in grey levels (0-255), per video."""

    input: float
    output: float
    frames: int

    @property
    def ratio(self) -> float | None:
        """output / input: 1 means the edit added no flicker of its own."""
        return self.output / self.input if self.input > 0 else None


def _weighted_change(previous: Frame, current: Frame, mask: Mask) -> tuple[float, float]:
    """(sum of mask-weighted |current - previous| averaged over channels, sum of weights)."""
    change = np.abs(current.astype(np.float32) - previous.astype(np.float32)).mean(axis=2)
    return float((change * mask).sum()), float(mask.sum())


class FlickerMeter:
    """The flicker of an input video and its output, fed one frame pair at a time (nothing kept but the last)."""

    def __init__(self) -> None:
        self._totals = np.zeros(3)  # input change, output change, weight
        self._previous: tuple[Frame, Frame] | None = None
        self.frames = 0

    def add(self, frame_in: Frame, frame_out: Frame, mask: Mask) -> None:
        """The next frame of both; mask (H, W) in [0, 1] weights its change from the frame before."""
        if frame_in.shape != frame_out.shape or mask.shape != frame_in.shape[:2]:
            raise ValueError(f"flicker_index: frame {self.frames}: shapes {frame_in.shape}, {frame_out.shape}, "
                             f"mask {mask.shape} differ")
        if self._previous is not None:
            change_in, weight = _weighted_change(self._previous[0], frame_in, mask)
            change_out, _ = _weighted_change(self._previous[1], frame_out, mask)
            self._totals += (change_in, change_out, weight)
        self._previous, self.frames = (frame_in, frame_out), self.frames + 1

    def result(self) -> Flicker:
        if self._totals[2] == 0:
            return Flicker(input=0.0, output=0.0, frames=self.frames)
        return Flicker(input=self._totals[0] / self._totals[2], output=self._totals[1] / self._totals[2],
                       frames=self.frames)


def flicker_index(inputs: Iterable[Frame], outputs: Iterable[Frame], masks: Iterable[Mask]) -> Flicker:
    """Flicker of an input video and its processed output over the face region; frames are streamed, not kept.

    masks[t] (H, W) in [0, 1] weights the change from frame t-1 to frame t. Sequences must have equal lengths.
    """
    meter = FlickerMeter()
    for frame_in, frame_out, mask in itertools.zip_longest(inputs, outputs, masks):
        if frame_in is None or frame_out is None or mask is None:
            raise ValueError("flicker_index: input, output and mask sequences differ in length")
        meter.add(frame_in, frame_out, mask)
    return meter.result()


def face_mask(shape: tuple[int, ...], faces: Sequence[Face]) -> Mask:
    """(H, W) float32 mask: 1 inside any face box."""
    mask = np.zeros(shape[:2], np.float32)
    for face in faces:
        x1, y1, x2, y2 = np.round(face.bbox).astype(int)
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    return mask


def video_frames(path: Path) -> Iterator[Frame]:
    """BGR frames of a video, as stored."""
    return (frame.image for frame in decode_video(path))


def video_flicker(video_in: Path, video_out: Path, detector: FaceDetector) -> Flicker:
    """Flicker of a processed video against its input, over the faces detected in the input's frames."""
    inputs_a, inputs_b = itertools.tee(video_frames(video_in))
    masks = (face_mask(frame.shape, detector.detect_faces(frame)) for frame in inputs_b)
    try:
        result = flicker_index(inputs_a, video_frames(video_out), masks)
    except ValueError as error:
        raise EvaluateError(f"{video_out}: does not match {video_in}: {error}") from error
    if result.input == 0 and result.output == 0:
        raise EvaluateError(f"{video_in}: no face found in any frame; cannot measure flicker")
    return result
