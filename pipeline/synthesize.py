"""The synthesize stage: edit aligned face crops towards target expressions with the US-GAN generator.

One small protocol, two back-ends chosen by config (never guessed): torch, and ONNX Runtime (TensorRT -> CUDA -> CPU,
fp16 on GPU, TensorRT engine cache). Both run the generator at its own image_size and add only its upsampled residual
to the full-resolution crop (usgan.inference's resize helpers, shared, so the back-ends agree), and both convert
uint8 -> [-1, 1] -> uint8 so that a zero residual gives back the input crops bit-exactly.

Targets are (N, 7) weights over the expressions. A one-hot row is one expression; during a schedule's cross-fade a
row mixes two expressions (weights summing to 1), which the generator takes as a blended condition in one pass
(StarGAN-style generators interpolate smoothly between label vectors). intensity scales the residual per crop:
0 leaves the crop unchanged, 1 is the generator's full edit.

With expression geometry on, each crop also comes with a coarse warp field (usgan.tps.coarse_field, solved on
the CPU by pipeline.geometry): the field's upsampling, the warp of the crop and the generator run as one batched call
(torch: usgan.inference.apply_generator with fields; ONNX: the warp graph, exported once per weights file beside the
generator-only one), and the generator's change is added to the warped crop. A zero field leaves the crop as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.config import OnnxConfig, SynthesizerConfig, TorchDevice, TorchPrecision, resolve_weights
from pipeline.types import BACKENDS
from usgan.checkpoint import CheckpointError, WeightsInfo, file_sha256, load_generator
from usgan.errors import UserError
from usgan.export import ExportError, export_onnx
from usgan.sessions import create_session, run_generator, run_warped_generator, session_weights_info
from usgan.providers import CUDA, ExecutionPreference, usable_providers
from usgan.expressions import EXPRESSIONS
from usgan.tps import FIELD_GRID
from usgan.texture import TextureInputs, TextureLayer, TextureModel
from pipeline.geometry import TextureWeights
from usgan.inference import (
    add_residual, apply_generator, resize_residual, resize_to_generator,
)

log = logging.getLogger(__name__)

Fields = NDArray[np.float32]
"""(N, 32, 32, 2) float32 coarse warp fields in crop units (usgan.tps.coarse_field); zeros: no warp."""


class FaceSynthesizer(Protocol):
    """Edits (N, S, S, 3) uint8 BGR crops; the generator itself works at image_size (S may differ)."""

    image_size: int

    def synthesize(self, crops: NDArray[np.uint8], targets: NDArray[np.float32], intensity: NDArray[np.float32],
                   fields: Fields | None = None, texture: TextureWeights | None = None) -> NDArray[np.uint8]:
        """crops (N, S, S, 3) uint8 BGR, targets (N, 7), intensity (N,), fields (N, 32, 32, 2) or None (no warp),
        texture: the texture step's inputs (a synthesizer built with a texture model) -> (N, S, S, 3) uint8 BGR."""
        ...


# ---------------------------------------------------------------- conversions (pure)


def check_batch(crops: NDArray, targets: NDArray, intensity: NDArray, fields: NDArray | None = None) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit the protocol."""
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3 \
            or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops: expected (N, S, S, 3) uint8 BGR, got {getattr(crops, 'dtype', type(crops))} "
                         f"{getattr(crops, 'shape', None)}")
    count = crops.shape[0]
    if np.shape(targets) != (count, len(EXPRESSIONS)):
        raise ValueError(f"targets: expected ({count}, {len(EXPRESSIONS)}), got {np.shape(targets)}")
    if np.shape(intensity) != (count,):
        raise ValueError(f"intensity: expected ({count},), got {np.shape(intensity)}")
    if fields is not None and np.shape(fields) != (count, FIELD_GRID, FIELD_GRID, 2):
        raise ValueError(f"fields: expected ({count}, {FIELD_GRID}, {FIELD_GRID}, 2), got {np.shape(fields)}")


def to_model_input(crops: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(N, S, S, 3) uint8 BGR -> (N, 3, S, S) float32 RGB in [-1, 1]."""
    rgb = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(rgb / np.float32(127.5) - np.float32(1.0))


def from_model_output(images: NDArray[np.float32]) -> NDArray[np.uint8]:
    """(N, 3, S, S) float RGB in [-1, 1] -> (N, S, S, 3) uint8 BGR; the exact inverse of to_model_input on its range."""
    pixels = np.clip(np.rint((images + np.float32(1.0)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)[..., ::-1])


def onnx_cache_path(weights: Path, fp16: bool, cache_dir: Path, warp: bool = False,
                    texture: TextureModel | None = None) -> Path:
    """Where the export of these weights lives: keyed by content, so renamed or replaced files never mix up."""
    graph = "-warp" if warp else ""
    if texture is not None:
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in (
            texture.log_ratio, texture.mouth, texture.alpha, texture.ring, texture.ring_colour)))
        graph = f"-texture-{digest.hexdigest()[:12]}"
    return Path(cache_dir) / f"usgan-{file_sha256(weights)[:16]}-{'fp16' if fp16 else 'fp32'}{graph}.onnx"


# ---------------------------------------------------------------- back-ends


class TorchSynthesizer:
    """The generator in PyTorch (usgan.inference.apply_generator), in fp32 or with bf16 autocast.

    bf16 halves the generator's time on CPUs with native bfloat16 (AVX512-BF16, AMX) and on recent GPUs; its output
    differs from fp32 by at most a few 8-bit levels.
    """

    def __init__(self, weights: Path, device: TorchDevice = "auto", threads: int = 0,
                 precision: TorchPrecision = "fp32", texture: TextureModel | None = None):
        self.threads = threads
        chosen = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        self.generator, self.info = load_generator(weights, device=chosen)
        self.device_type = torch.device(chosen).type
        self.texture = None if texture is None else TextureLayer(texture).to(chosen)
        self.image_size = self.info.image_size
        native = bf16_native(self.device_type)
        self.precision = ("bf16" if native else "fp32") if precision == "auto" else precision
        if self.precision == "bf16" and not native:
            log.warning("bf16 requested but this %s has no native bfloat16: the generator will run slower, not faster",
                        self.device_type.upper())
        log.info("%s: torch generator on %s at %d px (%s)", weights, chosen, self.image_size, self.precision)

    def synthesize(self, crops: NDArray[np.uint8], targets: NDArray[np.float32], intensity: NDArray[np.float32],
                   fields: Fields | None = None, texture: TextureWeights | None = None) -> NDArray[np.uint8]:
        check_batch(crops, targets, intensity, fields)
        step = texture_step(self.texture, texture, fields)
        x = torch.from_numpy(to_model_input(crops))
        vectors = torch.from_numpy(np.asarray(targets, np.float32))
        scale = torch.from_numpy(np.asarray(intensity, np.float32))
        autocast = torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch_threads(self.threads), autocast:
            y = apply_generator(self.generator, self.info, x, vectors, scale,
                                None if fields is None else torch.from_numpy(fields), step)
        return from_model_output(y.float().cpu().numpy())


def texture_step(layer: TextureLayer | None, weights: TextureWeights | None,
                 fields: Fields | None) -> tuple[TextureLayer, TextureInputs] | None:
    """The texture step for one batch, None when the batch or the synthesizer has none; ValueError when a batch
    brings texture inputs that the synthesizer was not built for, or without warp fields."""
    if weights is None or layer is None:
        if weights is not None:
            raise ValueError("texture: this synthesizer was built without a texture model")
        return None
    if fields is None or len(weights.fields) != len(fields):
        raise ValueError("texture: the texture step needs a warp field per crop")
    return layer, TextureInputs(*(torch.from_numpy(np.asarray(a, np.float32)) for a in
                                  (weights.fields, weights.ratio, weights.mouth)))


def bf16_native(device_type: str) -> bool:
    """True when bfloat16 convolutions run natively (CPU: oneDNN with AVX512-BF16/AMX; CUDA: compute >= 8.0)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set for one call and restored after (it is process-wide); 0 keeps it."""
    if threads <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class OnnxSynthesizer:
    """The generator exported to ONNX (once per weights file, cached) and run by ONNX Runtime. warp: the warp graph
    (crops may come with fields), else the generator alone (they may not)."""

    def __init__(self, weights: Path, config: OnnxConfig = OnnxConfig(), warp: bool = False,
                 texture: TextureModel | None = None):
        self.fp16 = gpu_provider_usable(config.preference) if config.fp16 is None else config.fp16
        cache_dir = Path(config.cache_dir).expanduser()
        path = exported_onnx(weights, self.fp16, cache_dir, warp, texture)
        self.session = create_session(path, config.preference, self.fp16, cache_dir / "tensorrt", config.threads)
        self.info: WeightsInfo = session_weights_info(self.session, path)
        self.image_size = self.info.image_size
        self.warp = warp or texture is not None
        self.textured = texture is not None

    def synthesize(self, crops: NDArray[np.uint8], targets: NDArray[np.float32], intensity: NDArray[np.float32],
                   fields: Fields | None = None, texture: TextureWeights | None = None) -> NDArray[np.uint8]:
        check_batch(crops, targets, intensity, fields)
        if fields is not None and not self.warp:
            raise ValueError("fields: this ONNX synthesizer runs the generator alone (build it with warp=True)")
        if (texture is not None) != self.textured:
            raise ValueError("texture: give the texture step's inputs exactly when the synthesizer has a texture model")
        x = torch.from_numpy(to_model_input(crops))
        small = resize_to_generator(x, self.image_size).numpy()
        vectors = np.asarray(targets, np.float32)
        base, residual = self.warped(x, small, vectors, fields, texture) if self.warp \
            else self.unwarped(x, small, vectors)
        residual = resize_residual(residual, tuple(x.shape[2:]))
        per_crop = torch.from_numpy(np.asarray(intensity, np.float32))
        refine = False if texture is None else torch.from_numpy(np.asarray(fields).any(axis=(1, 2, 3)))
        return from_model_output(add_residual(base, residual, per_crop, self.info, torch.from_numpy(vectors),
                                              refine).numpy())

    def unwarped(self, x: torch.Tensor, small: NDArray, vectors: NDArray) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops and the generator's residual (at its size)."""
        output = run_generator(self.session, small, vectors)
        # The fp16 graph adds the residual to the fp16-rounded input: subtract that, so a zero residual stays zero.
        base = small.astype(np.float16).astype(np.float32) if self.fp16 else small
        return x, torch.from_numpy(output - base)

    def warped(self, x: torch.Tensor, small: NDArray, vectors: NDArray, fields: Fields | None,
               texture: TextureWeights | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The warped (and textured) crops and the generator's residual for them; crops with a zero field and no
        texture are kept bit-exactly (a GPU provider may run the warp in fp16)."""
        fields = np.zeros((len(x), FIELD_GRID, FIELD_GRID, 2), np.float32) if fields is None else fields
        extra = () if texture is None else (texture.fields, texture.ratio, texture.mouth)
        warped, residual = run_warped_generator(self.session, x.numpy(), small, vectors, fields, extra)
        still = ~np.asarray(fields).any(axis=(1, 2, 3))
        if texture is not None:
            still &= ~(texture.ratio.any(1) | texture.mouth.any(1))
        warped[still] = x.numpy()[still]
        return torch.from_numpy(warped), torch.from_numpy(residual)


def gpu_provider_usable(preference: ExecutionPreference) -> bool:
    """True when ONNX Runtime would run on a GPU (CUDA or TensorRT) for this preference."""
    import onnxruntime as ort

    return preference != "cpu" and CUDA in usable_providers(ort.get_available_providers())


def exported_onnx(weights: Path, fp16: bool, cache_dir: Path, warp: bool = False,
                  texture: TextureModel | None = None) -> Path:
    """The cached ONNX export of weights (warp: the warp graph; texture: the texture graph), exporting it first when
    it is not there yet."""
    if not Path(weights).is_file():
        raise CheckpointError(f"{weights}: no such file")
    path = onnx_cache_path(weights, fp16, cache_dir, warp, texture)
    if not path.is_file():
        log.info("%s: exporting to %s (once per weights file)", weights, path)
        try:
            export_onnx(weights, path, fp16=fp16, warp=warp, texture=texture)
        except ExportError as error:
            cause = error.__cause__
            if not isinstance(cause, OSError):
                raise
            raise UserError(f"{path}: cannot write the ONNX export ({cause.strerror or cause}); "
                            "set synthesizer.onnx.cache_dir to a writable folder") from error
    return path


def build_synthesizer(config: SynthesizerConfig, weights: Path | None = None, warp: bool = False,
                      texture: TextureModel | None = None) -> FaceSynthesizer:
    """The back-end config.backend names, loaded with weights: a file already resolved (see resolve_weights), else
    config.weights or the shipped default. warp: crops will come with warp fields (ONNX: the warp graph); texture:
    and with the texture step's inputs for this texture model."""
    weights = weights or resolve_weights(config.weights)
    if config.backend == "torch":
        return TorchSynthesizer(weights, config.device, config.threads, config.precision, texture)
    if config.backend == "onnx":
        return OnnxSynthesizer(weights, config.onnx, warp, texture)
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {config.backend!r}")
