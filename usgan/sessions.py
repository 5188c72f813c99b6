"""ONNX Runtime sessions for the exported generator graphs (usgan.export), on the best usable provider
(TensorRT -> CUDA -> CPU), and the graphs' interfaces: the generator alone, the warp graph and the texture graph."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from usgan.checkpoint import WeightsInfo, read_metadata, read_weights_info
from usgan.expressions import EXPRESSIONS
from usgan.providers import TENSORRT, ExecutionPreference, SessionError, build_providers, usable_providers

logger = logging.getLogger(__name__)

INPUT_IMAGE = "image"
INPUT_EXPRESSION = "expression"
OUTPUT = "output"
INPUT_CROP, INPUT_FIELD, OUTPUT_WARPED, OUTPUT_RESIDUAL = "crop", "field", "warped", "residual"
INTERFACES = {  # warp graph or not: (inputs, outputs)
    False: ([INPUT_IMAGE, INPUT_EXPRESSION], [OUTPUT]),
    True: ([INPUT_CROP, INPUT_IMAGE, INPUT_EXPRESSION, INPUT_FIELD], [OUTPUT_WARPED, OUTPUT_RESIDUAL]),
}
TEXTURE_INPUTS = ["texture_field", "texture_ratio", "texture_mouth"]
TEXTURE_INTERFACE = (INTERFACES[True][0] + TEXTURE_INPUTS, INTERFACES[True][1])


# --- ONNX Runtime sessions ---


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # 0 lets ONNX Runtime pick one per physical core
    options.log_severity_level = 3  # errors only: warnings about shape nodes placed on CPU are expected noise
    return options


def create_session(
    onnx_path: Path,
    preference: ExecutionPreference = "auto",
    fp16: bool = False,
    cache_dir: Path = Path(".cache/tensorrt"),
    threads: int = 0,
) -> ort.InferenceSession:
    """An ONNX Runtime session for an exported generator on the best usable provider; logs which one is active."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise SessionError(f"{onnx_path}: no such file")
    if threads < 0:
        raise SessionError(f"{onnx_path}: threads must be >= 0 (0 = automatic), got {threads}")
    providers = build_providers(preference, usable_providers(ort.get_available_providers()), fp16, Path(cache_dir))
    if providers[0][0] == TENSORRT:
        Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    session = _open_session(onnx_path, providers, threads)
    check_interface(session, onnx_path)
    active = session.get_providers()
    if active[0] != providers[0][0]:
        logger.warning("%s: %s could not start; running on %s", onnx_path, providers[0][0], active[0])
    logger.info("%s: ONNX Runtime providers %s (preference %s)", onnx_path, active, preference)
    return session


def _open_session(onnx_path: Path, providers: list[tuple[str, dict[str, Any]]], threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(onnx_path),
            sess_options=session_options(threads),
            providers=[name for name, _ in providers],
            provider_options=[options for _, options in providers],
        )
    # ONNX Runtime's pybind errors (InvalidProtobuf, NoSuchFile, Fail, ...) share no base class below Exception.
    except Exception as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise SessionError(f"{onnx_path}: ONNX Runtime cannot load it ({first[:200]})") from error


def check_interface(session: ort.InferenceSession, onnx_path: Path) -> None:
    """Refuse ONNX files that have neither our generator's nor our warp graph's interface."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if (inputs, outputs) not in [*INTERFACES.values(), TEXTURE_INTERFACE]:
        raise SessionError(f"{onnx_path}: not a US-GAN generator export (inputs {inputs}, outputs {outputs})")


def session_weights_info(session: ort.InferenceSession, onnx_path: Path) -> WeightsInfo:
    """The WeightsInfo that export_onnx embedded (image_size, expressions, provenance)."""
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return read_weights_info(onnx_path, read_metadata(metadata, onnx_path, SessionError, "ONNX file"))


def run_generator(session: ort.InferenceSession, image: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float32 in [-1, 1] and (N, 7) float32 -> (N, 3, H, W) float32, unclamped."""
    batch = image.shape[0] if image.ndim == 4 else -1
    if image.ndim != 4 or image.shape[1] != 3 or expression.shape != (batch, len(EXPRESSIONS)):
        raise ValueError(f"expected image (N, 3, H, W) and expression (N, 7); got {image.shape} and {expression.shape}")
    feeds = {INPUT_IMAGE: image, INPUT_EXPRESSION: expression}
    return session.run([OUTPUT], {name: array.astype(np.float32, copy=False) for name, array in feeds.items()})[0]


def run_warped_generator(session: ort.InferenceSession, crop: np.ndarray, image: np.ndarray, expression: np.ndarray,
                         field: np.ndarray, texture: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The warp graph on float32 arrays (see the module docstring): (warped crops, the generator's residual);
    texture: the texture graph's three extra inputs."""
    names = TEXTURE_INTERFACE[0] if texture else INTERFACES[True][0]
    feeds = dict(zip(names, (crop, image, expression, field, *texture)))
    warped, residual = session.run(INTERFACES[True][1], {k: v.astype(np.float32, copy=False) for k, v in feeds.items()})
    return warped, residual
