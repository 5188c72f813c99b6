"""ONNX export of the generator, with a parity check (usgan.sessions runs the exported graphs).

The exported graph is exactly Generator.forward in eval mode: per-image InstanceNorm statistics, output unclamped.
Interface: inputs `image` (N, 3, H, W) float32 in [-1, 1] and `expression` (N, 7) float32 one-hot,
output `output` (N, 3, H, W) float32. N, H and W are dynamic; H and W must be multiples of 4.
The warp graph (export_onnx(warp=True), opset >= 16) is usgan.inference.warped_residual: inputs `crop` (N, 3, S, S),
`image` (the crop at the generator's size), `expression` and `field` (N, 32, 32, 2), the coarse warp field of
usgan.tps.coarse_field; outputs `warped` (N, 3, S, S), the warped crop, and `residual` (N, 3, H, W).
The texture graph (export_onnx(warp=True, texture=MODEL)) adds the texture step (usgan.texture.TextureLayer, its
maps stored in the graph) after the warp: three more inputs, `texture_field` (N, 32, 32, 2), `texture_ratio` and
`texture_mouth` (N, 7); `warped` is then the warped and textured crop.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from usgan.checkpoint import METADATA_KEY, WeightsInfo, atomic_write, generator_metadata, load_generator, refuse_overwrite
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS
from usgan.tps import FIELD_GRID
from usgan.inference import warped_residual
from usgan.texture import TextureInputs, TextureLayer, TextureModel
from usgan.model import Generator
from usgan.providers import CPU
from usgan.sessions import (
    INPUT_CROP, INPUT_EXPRESSION, INPUT_FIELD, INPUT_IMAGE, INTERFACES, OUTPUT, OUTPUT_RESIDUAL, OUTPUT_WARPED,
    TEXTURE_INPUTS, TEXTURE_INTERFACE, session_options,
)

logger = logging.getLogger(__name__)

WARP_OPSET = 16  # grid_sample's first opset
PRECISION_KEY = "usgan.precision"
MIN_OPSET, MAX_OPSET = 13, 20  # 20 is the TorchScript exporter's ceiling
# Largest |onnx - torch| accepted by the export's parity check (measured: ~3e-6 fp32, ~2e-3 fp16 on random weights).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}


class ExportError(UserError):
    """An export that cannot be done or whose graph does not reproduce the torch generator."""


@dataclass(frozen=True)
class ExportResult:
    """What export_onnx wrote and how closely ONNX Runtime (CPU) reproduced the fp32 torch generator."""

    path: Path
    precision: Literal["fp32", "fp16"]
    opset: int
    max_abs_diff: float


class _OnnxGenerator(nn.Module):
    """Keeps the float32 interface while the generator itself may run in fp16 (casts live inside the graph)."""

    def __init__(self, generator: Generator, dtype: torch.dtype):
        super().__init__()
        self.generator = generator.to(dtype).eval()
        self.dtype = dtype

    def forward(self, image: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return self.generator(image.to(self.dtype), expression.to(self.dtype)).float()


class _OnnxWarpedGenerator(_OnnxGenerator):
    """The warp (float32) and the generator (its own dtype) as one graph: usgan.inference.warped_residual."""

    def forward(self, crop: torch.Tensor, image: torch.Tensor, expression: torch.Tensor,  # type: ignore[override]
                field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return warped_residual(self.generator, crop, image, expression, field)


class _OnnxTexturedGenerator(_OnnxGenerator):
    """The warp, the texture step (float32) and the generator as one graph."""

    def __init__(self, generator: Generator, dtype: torch.dtype, texture: TextureModel):
        super().__init__(generator, dtype)
        self.texture = TextureLayer(texture)

    def forward(self, crop: torch.Tensor, image: torch.Tensor, expression: torch.Tensor,  # type: ignore[override]
                field: torch.Tensor, texture_field: torch.Tensor, texture_ratio: torch.Tensor,
                texture_mouth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = TextureInputs(texture_field, texture_ratio, texture_mouth)
        return warped_residual(self.generator, crop, image, expression, field, (self.texture, inputs))


def graph_interface(warp: bool, texture: TextureModel | None) -> tuple[list[str], list[str]]:
    """The exported graph's (inputs, outputs)."""
    return TEXTURE_INTERFACE if texture is not None else INTERFACES[warp]


# --- export ---


def export_onnx(weights_path: Path, out_path: Path, fp16: bool = False, opset: int = 17,
                warp: bool = False, texture: TextureModel | None = None) -> ExportResult:
    """Export one of our generator files to ONNX, check it (onnx.checker + ORT parity) and write it atomically.
    warp: the warp graph (see the module docstring) rather than the generator alone; texture: the texture graph."""
    weights_path, out_path = Path(weights_path), Path(out_path)
    warp = warp or texture is not None
    lowest = WARP_OPSET if warp else MIN_OPSET
    if not lowest <= opset <= MAX_OPSET:
        raise ExportError(f"{out_path}: opset {opset} unsupported; use {lowest}..{MAX_OPSET}")
    refuse_overwrite(weights_path, out_path)
    if out_path.suffix.lower() != ".onnx":
        logger.warning("%s: an ONNX model written under a name that does not end in .onnx", out_path)
    generator, info = load_generator(weights_path)
    model = trace_generator(generator, fp16, opset, warp, texture)
    embed_weights_info(model, info, fp16)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{out_path}: exported graph fails onnx.checker: {str(error).splitlines()[0]}") from error
    precision: Literal["fp32", "fp16"] = "fp16" if fp16 else "fp32"
    tolerance = PARITY_TOLERANCE[precision]
    max_abs_diff = check_parity(generator, model.SerializeToString(), info.image_size, tolerance, out_path, warp,
                                texture)
    try:
        atomic_write(out_path, lambda tmp: onnx.save_model(model, str(tmp)))
    except OSError as error:  # full disk, read-only folder, a parent that is a file: no partial file is left
        raise ExportError(f"{out_path}: cannot write it ({error.strerror or error})") from error
    logger.info("%s: %s ONNX (opset %d), parity max |diff| %.2e", out_path, precision, opset, max_abs_diff)
    return ExportResult(path=out_path, precision=precision, opset=opset, max_abs_diff=max_abs_diff)


def trace_generator(generator: Generator, fp16: bool, opset: int, warp: bool = False,
                    texture: TextureModel | None = None) -> onnx.ModelProto:
    """Trace `generator` (a copy; the caller's stays fp32) with the TorchScript exporter into an in-memory model."""
    copy = Generator(generator.config)
    copy.load_state_dict(generator.state_dict())
    dtype = torch.float16 if fp16 else torch.float32
    if texture is not None:
        wrapper: nn.Module = _OnnxTexturedGenerator(copy, dtype, texture)
    else:
        wrapper = (_OnnxWarpedGenerator if warp else _OnnxGenerator)(copy, dtype)
    # H and W are dynamic axes, so a small dummy traces the same graph (fp16 convs on CPU are slow at 128²).
    dummy = tuple(torch.from_numpy(array) for array in parity_inputs(1, 32, warp, texture is not None))
    spatial = {"batch": 0, "height": 2, "width": 3}
    dynamic = {INPUT_IMAGE: {v: k for k, v in spatial.items()}, INPUT_EXPRESSION: {0: "batch"},
               INPUT_CROP: {0: "batch", 2: "crop_height", 3: "crop_width"}, INPUT_FIELD: {0: "batch"},
               **{name: {0: "batch"} for name in TEXTURE_INPUTS}}
    dynamic |= {OUTPUT: dynamic[INPUT_IMAGE], OUTPUT_RESIDUAL: dynamic[INPUT_IMAGE], OUTPUT_WARPED: dynamic[INPUT_CROP]}
    names = graph_interface(warp, texture)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (stable for this plain conv graph); its deprecation notice and the
        # "instance_norm train=True" note are expected: per-image statistics are exactly the official test behaviour.
        # The tracer's note on F.instance_norm's spatial-size sanity check is harmless for the same reason.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        # The warp graph's size-dependent parts are computed at run time, which constant folding leaves alone.
        warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1.*")
        torch.onnx.export(
            wrapper, dummy, buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=names[0], output_names=names[1],
            dynamic_axes={name: dynamic[name] for name in names[0] + names[1]},
        )
    return onnx.load_model_from_string(buffer.getvalue())


def embed_weights_info(model: onnx.ModelProto, info: WeightsInfo, fp16: bool) -> None:
    """Store our WeightsInfo JSON (the safetensors header) and the precision in the model's metadata_props."""
    weights_json = json.dumps(generator_metadata(info), sort_keys=True)
    onnx.helper.set_model_props(model, {METADATA_KEY: weights_json, PRECISION_KEY: "fp16" if fp16 else "fp32"})
    model.doc_string = "US-GAN generator: output = G(image, expression) + image, unclamped"


def parity_inputs(batch: int, image_size: int, warp: bool = False, texture: bool = False) -> tuple[np.ndarray, ...]:
    """A fixed pseudo-random image batch in [-1, 1] and cycling one-hot expressions; for the warp graph, also crops
    at twice the size (first) and small coarse fields (last), in the graph's input order."""
    rng = np.random.default_rng(0)
    image = rng.uniform(-1.0, 1.0, size=(batch, 3, image_size, image_size)).astype(np.float32)
    expression = np.eye(len(EXPRESSIONS), dtype=np.float32)[np.arange(batch) % len(EXPRESSIONS)]
    if not warp:
        return image, expression
    crop = rng.uniform(-1.0, 1.0, size=(batch, 3, 2 * image_size, 2 * image_size)).astype(np.float32)
    field = rng.normal(0.0, 0.02, size=(batch, FIELD_GRID, FIELD_GRID, 2)).astype(np.float32)
    if not texture:
        return crop, image, expression, field
    texture_field = rng.normal(0.0, 0.02, size=(batch, FIELD_GRID, FIELD_GRID, 2)).astype(np.float32)
    ratio = rng.normal(0.0, 0.5, size=(batch, len(EXPRESSIONS))).astype(np.float32)
    mouth = rng.uniform(0.0, 1.0, size=(batch, len(EXPRESSIONS))).astype(np.float32)
    return crop, image, expression, field, texture_field, ratio, mouth


def check_parity(generator: Generator, model: bytes, image_size: int, tolerance: float, where: Path,
                 warp: bool = False, texture: TextureModel | None = None) -> float:
    """Max |ONNX Runtime CPU - torch fp32| on a batch of 2; raises ExportError above `tolerance`."""
    inputs = parity_inputs(2, image_size, warp, texture is not None)
    session = ort.InferenceSession(model, sess_options=session_options(0), providers=[CPU])
    onnx_outputs = session.run(None, dict(zip(graph_interface(warp, texture)[0], inputs)))
    with torch.no_grad():
        tensors = [torch.from_numpy(array) for array in inputs]
        if texture is not None:
            step = (TextureLayer(texture), TextureInputs(*tensors[4:]))
            outputs = warped_residual(generator.eval(), *tensors[:4], step)
        else:
            outputs = warped_residual(generator.eval(), *tensors) if warp else (generator.eval()(*tensors),)
    max_abs_diff = max(float(np.abs(mine - theirs.numpy()).max()) for mine, theirs in zip(onnx_outputs, outputs))
    if not max_abs_diff <= tolerance:  # also catches NaN
        raise ExportError(f"{where}: exported graph differs from torch by {max_abs_diff:.3g} (> {tolerance})")
    return max_abs_diff
