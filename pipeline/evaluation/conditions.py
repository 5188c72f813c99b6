"""The edits evaluate compares: the generator alone and, given an expression geometry model (usgan.geometry), the
landmark warp alone and the warp followed by the generator on the warped crop.

The warp reads each crop's 106 landmarks (2d106det), fits the source's expression, and moves the landmarks to the
target's shape (target_landmarks: the source's expression component replaced by the target's, scaled by the fit's
confidence and by the warp intensity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.evaluation.metrics import GENERATOR, WARP, WARP_GENERATOR, WARP_TEXTURE, WARP_TEXTURE_GENERATOR
from pipeline.evaluation.sources import EvaluateError, bgr_to_tensor, tensor_to_bgr
from pipeline.faces.landmarks import LandmarkDetector
from pipeline.types import Frame
from usgan.checkpoint import CheckpointError, WeightsInfo, named_geometry
from usgan.geometry import Fit, ShapeModel, fit_expression, load_model, target_landmarks
from usgan.texture import TextureLayer, TextureModel, canonical_field, fitted_weights
from usgan.tps import warp_crops
from usgan.inference import apply_generator, resize_to_generator
from usgan.expressions import EXPRESSIONS
from usgan.model import Generator

GeometryChoice = Path | Literal["auto", "off"]
TEXTURE_MAP_SIZE = 128  # the texture's maps are warped at the generator's size (the shipped one's) and upsampled
"""A geometry file, "auto" (the file the weights' header names, if any) or "off" (the generator alone)."""


@dataclass(frozen=True)
class Geometry:
    """An expression geometry model, the landmark net that reads faces for it, and the warp's intensity."""

    path: Path
    model: ShapeModel
    detector: LandmarkDetector
    intensity: float = 1.0
    texture: TextureModel | None = None  # the texture step after the warp (its conditions are evaluated too)


@dataclass(frozen=True)
class FittedFaces:
    """Crops' landmarks (N, 106, 2) in crop units and the geometry model's fit of them."""

    points: NDArray[np.float32]
    fit: Fit

    def select(self, rows: Sequence[int]) -> FittedFaces:
        return FittedFaces(self.points[list(rows)], self.fit.select(list(rows)))


@dataclass(frozen=True)
class Editor:
    """What edits a crop: the generator with its header, and the geometry model when the warp is evaluated too."""

    generator: Generator
    info: WeightsInfo
    geometry: Geometry | None = None

    @property
    def conditions(self) -> tuple[str, ...]:
        if self.geometry is None:
            return (GENERATOR,)
        textured = (WARP_TEXTURE, WARP_TEXTURE_GENERATOR) if self.geometry.texture is not None else ()
        return (GENERATOR, WARP, WARP_GENERATOR, *textured)


def header_geometry(weights: Path) -> Path | None:
    """The geometry file a generator's JSON header names (key "geometry", relative to the weights' folder)."""
    try:
        return named_geometry(weights)
    except CheckpointError as error:
        raise EvaluateError(str(error)) from error


def resolve_geometry(choice: GeometryChoice, weights: Path | None) -> tuple[Path | None, str]:
    """(the geometry file to evaluate or None, where it came from: "option", "weights header" or "none")."""
    if choice == "off":
        return None, "none"
    if choice != "auto":
        return Path(choice).expanduser(), "option"
    named = header_geometry(weights) if weights is not None else None
    if named is not None and not named.is_file():
        raise EvaluateError(f"{weights}: its header names the geometry file {named}, which is missing; "
                            "pass --geometry PATH or --geometry off")
    return named, ("weights header" if named else "none")


def load_geometry(path: Path, intensity: float = 1.0, texture: TextureModel | None = None) -> Geometry:
    """The geometry model at path and a landmark detector; GeometryError naming the file if it is not one."""
    return Geometry(Path(path), load_model(path), LandmarkDetector(), intensity, texture)


def fit_faces(geometry: Geometry, crops: Sequence[Frame]) -> FittedFaces:
    """Landmarks of square aligned crops (one size) and the model's fit of their expressions."""
    points = geometry.detector.detect(crops) / np.float32(crops[0].shape[0])
    return FittedFaces(points, fit_expression(geometry.model, points))


def warp_towards(geometry: Geometry, x: torch.Tensor, faces: FittedFaces,
                 targets: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, 3, S, S) crops warped from their landmarks to their targets' (the same crops' faces, in order), and the
    warped crops with the texture step too (None without a texture model)."""
    goal = target_landmarks(geometry.model, faces.points, list(targets), geometry.intensity, fit=faces.fit)
    warped = warp_crops(x, torch.from_numpy(faces.points), torch.from_numpy(goal).float())
    if geometry.texture is None:
        return warped, None
    return warped, textured(geometry, warped, faces, goal, targets)


def textured(geometry: Geometry, warped: torch.Tensor, faces: FittedFaces, goal: NDArray,
             targets: Sequence[str]) -> torch.Tensor:
    """The texture step on warped crops whose landmarks are now goal (as pipeline.geometry gives it, for stills)."""
    vectors = np.eye(len(EXPRESSIONS), dtype=np.float32)[[EXPRESSIONS.index(t) for t in targets]]
    intensity = np.full(len(targets), geometry.intensity, np.float32)
    ratio, mouth = fitted_weights(geometry.texture, faces.fit, faces.points, goal, vectors, intensity)
    small = resize_to_generator(warped, TEXTURE_MAP_SIZE)
    with torch.no_grad():
        return TextureLayer(geometry.texture)(warped, small, canonical_field(geometry.texture, goal),
                                              torch.from_numpy(ratio), torch.from_numpy(mouth))[0]


def edit_conditions(editor: Editor, crops: Sequence[Frame], targets: Sequence[str],
                    faces: FittedFaces | None = None) -> dict[str, list[Frame]]:
    """Each crop edited towards its target under every condition of the editor (faces: the crops' fit, needed
    with a geometry model), as BGR uint8 images."""
    x = bgr_to_tensor(crops)
    outputs = {GENERATOR: apply_generator(editor.generator, editor.info, x, list(targets))}
    if editor.geometry is not None:
        if faces is None:
            raise ValueError("edit_conditions: the warp needs the crops' fitted faces")
        warped, with_texture = warp_towards(editor.geometry, x, faces, targets)
        outputs[WARP] = warped
        outputs[WARP_GENERATOR] = apply_generator(editor.generator, editor.info, warped, list(targets))
        if with_texture is not None:
            outputs[WARP_TEXTURE] = with_texture
            outputs[WARP_TEXTURE_GENERATOR] = apply_generator(editor.generator, editor.info, with_texture,
                                                              list(targets), refine=True)
    return {name: tensor_to_bgr(images) for name, images in outputs.items()}
