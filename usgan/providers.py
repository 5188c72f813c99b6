"""ONNX Runtime execution providers: the preference a user picks and the provider list it builds (pure, no ONNX).

Kept apart from usgan.export so that configs can name the choices without importing onnx or torch.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Literal, get_args

from usgan.errors import UserError

ExecutionPreference = Literal["auto", "tensorrt", "cuda", "cpu"]
EXECUTION_PREFERENCES: tuple[ExecutionPreference, ...] = get_args(ExecutionPreference)
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class SessionError(UserError):
    """An ONNX model or execution provider that ONNX Runtime cannot use; the message names the file or provider."""


def tensorrt_options(fp16: bool, cache_dir: Path) -> dict[str, Any]:
    """TensorRT EP options: engines and timing caches persist in cache_dir (one sub-folder per precision)."""
    cache = str(Path(cache_dir) / ("fp16" if fp16 else "fp32"))
    return {
        "device_id": 0,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_max_workspace_size": 2 << 30,
    }


def build_providers(
    preference: ExecutionPreference, available: list[str], fp16: bool, cache_dir: Path
) -> list[tuple[str, dict[str, Any]]]:
    """Providers with options, best first (TensorRT -> CUDA -> CPU); CPU always ends the list as the fallback."""
    if preference not in EXECUTION_PREFERENCES:
        raise SessionError(f"unknown execution preference {preference!r}; valid: {', '.join(EXECUTION_PREFERENCES)}")
    wanted = {"auto": [TENSORRT, CUDA], "tensorrt": [TENSORRT, CUDA], "cuda": [CUDA], "cpu": []}[preference]
    if preference in ("tensorrt", "cuda") and wanted[0] not in available:
        raise SessionError(
            f"{wanted[0]} is not usable here (usable: {', '.join(available) or 'none'}); choose auto or cpu"
        )
    options = {TENSORRT: tensorrt_options(fp16, cache_dir), CUDA: {"device_id": 0}}
    return [(name, options[name]) for name in wanted if name in available] + [(CPU, {})]


def usable_providers(available: list[str]) -> list[str]:
    """Drop GPU providers that are compiled in but cannot start here (no CUDA device, no TensorRT libraries)."""
    import torch  # only here: choosing providers for a real session

    gpu_ok = torch.cuda.is_available()
    trt_ok = gpu_ok and _tensorrt_libraries_found()
    return [p for p in available if (p != CUDA or gpu_ok) and (p != TENSORRT or trt_ok)]


def _tensorrt_libraries_found() -> bool:
    """True when libnvinfer can be loaded: on the library path, or from the `tensorrt_libs` wheel."""
    if importlib.util.find_spec("tensorrt_libs") is not None:
        importlib.import_module("tensorrt_libs")  # its import preloads libnvinfer so ONNX Runtime can find it
        return True
    return ctypes.util.find_library("nvinfer") is not None
