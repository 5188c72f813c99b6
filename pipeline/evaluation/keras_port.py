"""A Keras 2 HDF5 model rebuilt layer by layer in torch: enough of Keras (convolutions, separable convolutions,
batch norm, pooling, add, activations) to run fer's mini-Xception without importing TensorFlow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from usgan.errors import UserError


class JudgeError(UserError):
    """A judge model that is missing or cannot be read; the message names the file."""


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
