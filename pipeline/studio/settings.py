"""The studio's controls, one to one with `process`'s options, and the ProcessConfig they make.

The page's values go through load_process_config like the CLI's options do, so a bad value is the same one-line
error, naming the control instead of the option.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pipeline.config import DEFAULT_CONFIG, DEFAULT_WEIGHTS, ProcessConfig, load_process_config
from usgan.checkpoint import FORMAT_GENERATOR, FORMAT_TRAIN_STATE, METADATA_KEY

StudioGeometry = Literal["auto", "on", "off"]
"""auto: the shape model the weights name (process's default); on: the shipped one; off: the generator alone."""
STUDIO_GEOMETRIES: tuple[StudioGeometry, ...] = get_args(StudioGeometry)
SHIPPED_GEOMETRY = DEFAULT_WEIGHTS.with_name("geometry.safetensors")
SHIPPED_TEXTURE = DEFAULT_WEIGHTS.with_name("texture.safetensors")
WEIGHTS_DIR = DEFAULT_WEIGHTS.parent
CONTROL_NAMES = {"expression": "Expression", "intensity": "Intensity", "faces": "Faces", "blend": "Blend",
                 "synthesizer.weights": "Weights", "synthesizer.geometry": "Geometry", "synthesizer.texture": "Texture"}
"""The control that sets each config key, so that an error names it."""


@dataclass(frozen=True)
class StudioSettings:
    """The page's controls. schedule: a video's time schedule (process's -e with '@'); empty: expression alone."""

    expression: str = "happy"
    intensity: float = 1.0
    schedule: str = ""
    geometry: StudioGeometry = "auto"
    faces: str = "all"
    blend: str = "seamless"
    weights: str = str(DEFAULT_WEIGHTS)
    texture: StudioGeometry = "auto"  # as geometry: the texture file the weights name, the shipped one, or none

    def target(self, kind: Literal["video", "image"]) -> str:
        """What process's --expression gets: the schedule for a video when one is given, else the expression."""
        return self.schedule.strip() if kind == "video" and self.schedule.strip() else self.expression


def geometry_setting(geometry: StudioGeometry, shipped: Path = SHIPPED_GEOMETRY) -> str:
    """synthesizer.geometry for the Geometry control (or .texture for the Texture control, with its shipped file):
    auto, off, or the shipped file's path."""
    return str(shipped) if geometry == "on" else geometry


def studio_config(settings: StudioSettings, kind: Literal["video", "image"],
                  config_path: Path = DEFAULT_CONFIG) -> ProcessConfig:
    """The ProcessConfig process would build from the same choices (no progress bar on the server's stderr)."""
    overrides = {"expression": settings.target(kind), "intensity": float(settings.intensity), "faces": settings.faces,
                 "blend": settings.blend, "synthesizer.weights": Path(settings.weights),
                 "synthesizer.geometry": geometry_setting(settings.geometry),
                 "synthesizer.texture": geometry_setting(settings.texture, SHIPPED_TEXTURE), "progress": False}
    names = {**CONTROL_NAMES, "expression": "Schedule" if settings.target(kind) != settings.expression else
             "Expression"}
    return load_process_config(config_path, overrides, option_names=names)


def weights_choices(folders: Iterable[Path] = ()) -> list[str]:
    """Generator files (and training checkpoints) under weights/ and the given folders, the shipped one first."""
    found = [path for folder in (WEIGHTS_DIR, *folders) for path in sorted(Path(folder).rglob("*.safetensors"))
             if is_generator_file(path)]
    ordered = sorted(dict.fromkeys(found), key=lambda path: path != DEFAULT_WEIGHTS)
    return [str(path) for path in ordered]


def shown_path(path: str) -> str:
    """A weights file as the page lists it: relative to the checkout when inside it."""
    root = WEIGHTS_DIR.parent
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else str(path)


def is_generator_file(path: Path) -> bool:
    """A safetensors file whose US-GAN header says generator or training checkpoint (not a shape model)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as handle:
            header = (handle.metadata() or {}).get(METADATA_KEY, "{}")
        return json.loads(header).get("format") in (FORMAT_GENERATOR, FORMAT_TRAIN_STATE)
    except Exception:  # noqa: BLE001 - an unreadable file is simply not offered
        return False
