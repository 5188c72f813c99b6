"""Expression texture: what the warp cannot move into a face. Expression ratio images (Liu, Shan & Zhang, SIGGRAPH
2001) carry the shading an expression adds (folds beside the nose, a brow's furrow, a smile's cheeks), and a donor
mouth carries the inside of an opened mouth (a smile's teeth, a gasp's dark opening).

Everything lives in one canonical frame: the geometry model's mean face with its mouth opened as a surprise opens
it, SIZE x SIZE pixels over the aligned crop. Per expression the model holds the per-pixel median over people of
log(expressive luminance / the same person's neutral luminance warped onto the expressive landmarks), and for the
expressions that open the mouth the median donor mouth (RGB) with its alpha (the inner-lip outline, feathered).

TextureLayer applies it in the batched graph after the warp, with only ops that export to ONNX: the per-face mix of
the maps is warped from the canonical frame onto each face's target landmarks (usgan.tps), the luminance ratio
multiplies the crop, and the donor mouth, colour-matched to the face's own lip ring (its light teeth kept light), is
composited inside the target's inner lip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.numpy import save_file
import torch.nn.functional as F
from torch import nn

from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS, check_expression_numbers
from usgan.files import atomic_write, check_arrays, read_model_file
from usgan.geometry import Fit
from usgan.tps import coarse_field, field_grid, resample

FORMAT = "usgan-texture"
SIZE = 192  # canonical frame side in pixels (over the whole aligned crop)
INNER_LIP = (65, 66, 62, 70, 69, 57, 60, 54)  # 2d106det's inner lip outline, in order
OUTER_LIP = (52, 64, 63, 71, 67, 68, 61, 58, 59, 53, 56, 55)
MOUTH_EXPRESSIONS = ("happy", "surprised")  # the targets that open the mouth: they bring a donor mouth
ARRAY_SHAPES = {"canonical": (106, 2), "log_ratio": (7, "S", "S"), "mouth": (7, 3, "S", "S"), "alpha": (7, "S", "S"),
                "ring": ("S", "S"), "ring_colour": (7, 3)}  # S: the canonical frame's side
ARRAYS = tuple(ARRAY_SHAPES)
LUMA = (0.299, 0.587, 0.114)  # RGB -> luminance (Rec. 601)
SHADE_RANGE = (-0.7, 0.25)  # the applied log ratio's bounds: darker folds are real, a brighter patch is a glare


class TextureError(UserError):
    """A texture file that is missing or not a texture model; the message (one line) names it."""


@dataclass(frozen=True)
class TextureModel:
    """The stored model. Per expression (EXPRESSIONS order): log luminance ratio, donor mouth and its alpha (zero for
    expressions that bring none); gains: per-expression multiple of the log ratio applied at intensity 1."""

    canonical: NDArray    # (106, 2) crop units: the frame's landmarks
    log_ratio: NDArray    # (7, S, S)
    mouth: NDArray        # (7, 3, S, S) RGB in [0, 1]
    alpha: NDArray        # (7, S, S) in [0, 1]
    ring: NDArray         # (S, S) the lip ring, where a face's lip colour is read
    ring_colour: NDArray  # (7, 3) each donor mouth's own lip-ring colour
    gains: dict[str, float] = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:  # a hand-edited header fails at load, naming the gain
        check_expression_numbers(self.gains, "gains", ValueError, 0.0)

    def gain_of(self, expression: str) -> float:
        return float(self.gains.get(expression, 1.0))


# --- canonical-frame masks ----------------------------------------------------------------------------------------


def polygon_mask(points: NDArray, indices: tuple[int, ...], size: int = SIZE, dilate: float = 0.0,
                 feather: float = 0.0) -> NDArray[np.float32]:
    """(size, size) float32 mask of the polygon through points[indices] (crop units), grown by dilate pixels and
    blurred by a Gaussian of sigma feather pixels."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points[list(indices)] * size * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    mask = mask.astype(np.float32) / 255
    if dilate > 0:
        radius = int(np.ceil(dilate))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask


def lip_ring(canonical: NDArray, size: int = SIZE) -> NDArray[np.float32]:
    """The lips themselves: the outer lip outline less the inner one grown by 2 px."""
    outer = polygon_mask(canonical, OUTER_LIP, size)
    return np.clip(outer - polygon_mask(canonical, INNER_LIP, size, dilate=2.0), 0.0, 1.0)


def mouth_opening(points: NDArray) -> NDArray:
    """(N,) the inner lip outline's area over the outer one's, of (N, 106, 2) landmarks: 0 for a closed mouth."""
    def area(indices: tuple[int, ...]) -> NDArray:
        x, y = points[:, list(indices), 0], points[:, list(indices), 1]
        return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))
    return area(INNER_LIP) / np.maximum(area(OUTER_LIP), 1e-9)


# --- file -------------------------------------------------------------------------------------------------------


def save_texture(path: Path, model: TextureModel) -> None:
    """A safetensors file (fp16 maps) whose JSON header holds the format, expressions, gains and data sources."""
    arrays = {name: np.ascontiguousarray(getattr(model, name), dtype=np.float16 if getattr(model, name).ndim > 2
                                         else np.float32) for name in ARRAYS}
    header = {"format": FORMAT, "version": "1", "expressions": json.dumps(list(EXPRESSIONS)),
              "gains": json.dumps(model.gains), "sources": json.dumps(model.sources)}
    atomic_write(Path(path), lambda tmp: save_file(arrays, str(tmp), metadata=header))


def load_texture(path: str | Path) -> TextureModel:
    """The model saved by save_texture; TextureError naming the file when it is missing or not one."""
    header, stored = read_model_file(path, FORMAT, "texture", "build-texture", TextureError)
    arrays = {name: value.astype(np.float32) for name, value in stored.items()}
    check_arrays(arrays, ARRAY_SHAPES, Path(path).expanduser(), TextureError)
    try:
        return TextureModel(**arrays, gains=json.loads(header["gains"]), sources=json.loads(header["sources"]))
    except (ValueError, KeyError, TypeError) as error:
        raise TextureError(f"{Path(path).expanduser()}: not a readable texture file ({error})") from error


# --- per-face weights (CPU) ---------------------------------------------------------------------------------------


def face_weights(model: TextureModel, targets: NDArray, intensity: NDArray, posterior: NDArray,
                 confidence: NDArray, source_opening: NDArray, goal_opening: NDArray,
                 validity: NDArray | None = None) -> tuple[NDArray, NDArray]:
    """Per face, the (N, 7) weights of the log-ratio maps and of the donor mouths.

    Ratio: the targets' mix times each one's gain, less the source's own expression texture (the fit's posterior
    times its confidence, at the same gains: a smiling face turned sad loses its smile's folds first), all scaled
    by intensity. Mouth: only the opening expressions, and only the share of the target's opening that the source
    does not already have (a face that opens its mouth itself keeps its own mouth; video keeps the speaker's).
    validity: the fit's (N,), scaling the target's texture as it scales the target's shape (a profile gets none)."""
    gains = np.array([model.gain_of(name) for name in EXPRESSIONS], np.float32)
    scale = np.asarray(intensity, np.float32)[:, None]
    valid = np.ones((len(scale), 1), np.float32) if validity is None else np.asarray(validity, np.float32)[:, None]
    own = posterior * np.asarray(confidence, np.float32)[:, None]
    ratio = (np.asarray(targets, np.float32) * valid - own) * gains[None] * scale
    ratio[:, EXPRESSIONS.index("neutral")] = 0.0
    fill = np.clip(1.0 - np.asarray(source_opening) / np.maximum(np.asarray(goal_opening), 1e-6), 0.0, 1.0)
    fill = np.where(np.asarray(goal_opening) > 0.05, fill, 0.0)
    opens = np.array([name in MOUTH_EXPRESSIONS for name in EXPRESSIONS], np.float32)
    mouth = np.asarray(targets, np.float32) * opens[None] * (fill[:, None] * np.clip(scale, 0.0, 1.0)) * valid
    return ratio.astype(np.float32), mouth.astype(np.float32)


def fitted_weights(model: TextureModel, fit: Fit, points: NDArray, goal: NDArray, targets: NDArray,
                   intensity: NDArray) -> tuple[NDArray, NDArray]:
    """face_weights for faces the shape model fitted (fit), whose landmarks points (N, 106, 2) move to goal."""
    return face_weights(model, targets, intensity, fit.posterior, fit.confidence * fit.validity,
                        mouth_opening(np.asarray(points, np.float64)), mouth_opening(np.asarray(goal, np.float64)),
                        fit.validity)


def canonical_field(model: TextureModel, goal: NDArray) -> torch.Tensor:
    """(N, g, g, 2) the coarse field from the canonical frame to the target landmarks goal (N, 106, 2)."""
    canonical = np.broadcast_to(model.canonical, np.shape(goal)).astype(np.float64)
    return coarse_field(torch.from_numpy(canonical), torch.from_numpy(np.asarray(goal, np.float64)))


# --- the graph ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextureInputs:
    """Per face, what TextureLayer needs: the coarse field (N, g, g, 2) from the canonical frame to the target
    landmarks (usgan.tps.coarse_field; zeros where the face has none), the ratio and the mouth weights (N, 7)."""

    field: torch.Tensor
    ratio: torch.Tensor
    mouth: torch.Tensor

    def __iter__(self):
        return iter((self.field, self.ratio, self.mouth))

    def to(self, device: torch.device | str) -> TextureInputs:
        return TextureInputs(*(value.to(device=device, dtype=torch.float32) for value in self))


class TextureLayer(nn.Module):
    """The texture step of the batched graph (ONNX-exportable, opset >= 16): forward(crops (N, 3, S, S), the same
    crops at the generator's size (N, 3, s, s), both in [-1, 1] and warped; field (N, g, g, 2) canonical -> target
    landmarks (usgan.tps.coarse_field); ratio and mouth weights (N, 7)) -> both textured. The maps are warped onto
    the faces once, at the generator's size, and upsampled for the crops (the ratio is smooth, and the donor mouth is
    a median of many). Zero weights give back the crops."""

    def __init__(self, model: TextureModel):
        super().__init__()
        self.model = model  # its gains and canonical frame, for the per-face weights (not part of the graph)
        for name in ("log_ratio", "mouth", "alpha", "ring_colour"):
            self.register_buffer(name, torch.from_numpy(np.asarray(getattr(model, name), np.float32)))
        self.register_buffer("ring", torch.from_numpy(np.asarray(model.ring, np.float32))[None, None])
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor, small: torch.Tensor, field: torch.Tensor, ratio_weights: torch.Tensor,
                mouth_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mix = mouth_weights / mouth_weights.sum(1, keepdim=True).clamp_min(1e-6)  # the donor mouth's blend
        canonical = torch.cat([
            torch.einsum("nk,khw->nhw", ratio_weights, self.log_ratio)[:, None],
            torch.einsum("nk,kchw->nchw", mix, self.mouth),
            torch.einsum("nk,khw->nhw", mouth_weights, self.alpha)[:, None],
            self.ring.expand(small.shape[0], 1, -1, -1),
        ], 1)
        maps = resample(canonical, field_grid(field, small))                      # (N, 6, s, s) on the faces
        shade = maps[:, :1].clamp(*SHADE_RANGE).exp()
        lit = (small + 1.0) * 0.5 * shade
        ring = maps[:, 5:6]
        lips = (lit * ring).sum((2, 3)) / ring.sum((2, 3)).clamp_min(1e-6)       # (N, 3) the face's lip colour
        scale = (lips / (mix @ self.ring_colour).clamp_min(1e-3)).clamp(0.2, 5.0)[..., None, None]
        mouth = maps[:, 1:4]
        mouth = mouth * scale.pow(1.0 - (mouth * self.luma).sum(1, keepdim=True).clamp(0.0, 1.0))
        layers = torch.cat([shade, mouth, maps[:, 4:5].clamp(0.0, 1.0)], 1)      # (N, 5, s, s)
        return composite(crops, upsample(layers, crops)), composite(small, layers)


def upsample(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """maps (N, C, s, s) bilinearly at like's size (itself when already that size)."""
    return F.interpolate(maps, size=like.shape[-2:], mode="bilinear", align_corners=False)


def composite(crops: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
    """crops (N, 3, S, S) in [-1, 1] times the shading layers[:, :1], with the mouth layers[:, 1:4] composited by
    the alpha layers[:, 4:5]."""
    alpha = layers[:, 4:5]
    lit = (crops + 1.0) * 0.5 * layers[:, :1]
    return ((lit + alpha * (layers[:, 1:4] - lit)) * 2.0 - 1.0).clamp(-1.0, 1.0)
