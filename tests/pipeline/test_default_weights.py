"""The shipped default weights: what their header says, and that `process` uses them and changes the face."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from click.testing import CliRunner

from cli import cli
from clips import PORTRAIT
from pipeline.faces.detector import DetectorConfig, FaceDetector
from pipeline.config import DEFAULT_WEIGHTS
from usgan.checkpoint import load_generator, load_tensors
from usgan.expressions import EXPRESSIONS
from usgan.model import GeneratorConfig


def test_default_weights_are_the_papers_generator_trained_on_tfeid() -> None:
    generator, info = load_generator(DEFAULT_WEIGHTS)
    # The paper's generator plus our weightless [1, 2, 1] low-pass on the residual.
    assert info.generator == GeneratorConfig(residual_blur=3) and sum(p.numel() for p in generator.parameters()) == 2_533_440
    assert info.expressions == EXPRESSIONS and info.dataset == "tfeid" and info.step > 0
    assert "research" in info.license.lower()
    assert info.image_size == 128 and info.notes["validation_identities"] == ["16", "17", "30"]  # MODEL_CARD.md
    assert info.edit_gain == 1.1 and info.expression_gains == {"angry": 1.0, "happy": 1.25}
    tensors, _ = load_tensors(DEFAULT_WEIGHTS)
    assert tensors["main.0.weight"].dtype == torch.float16  # shipped in fp16 to keep the repository small
    assert DEFAULT_WEIGHTS.stat().st_size < 8_000_000


def test_process_uses_the_shipped_weights_and_changes_the_face(tmp_path) -> None:
    output = tmp_path / "smile.png"
    result = CliRunner().invoke(cli, ["process", str(PORTRAIT), "-e", "happy", "-o", str(output), "--no-progress"])
    assert result.exit_code == 0, result.output
    before, after = cv2.imread(str(PORTRAIT)), cv2.imread(str(output))
    assert before.shape == after.shape
    face = FaceDetector(DetectorConfig()).detect_faces(before)[0]
    x1, y1, x2, y2 = face.bbox.astype(int)
    inside = np.abs(after[y1:y2, x1:x2].astype(int) - before[y1:y2, x1:x2]).mean()
    outside = after.astype(int) - before
    outside[max(0, y1 - 40):y2 + 40, max(0, x1 - 40):x2 + 40] = 0
    assert inside > 2.0  # the expression edit is visible, not a rounding-level change
    assert np.abs(outside).max() <= 3  # JPEG round-off only, away from the face


def test_shipped_geometry_and_texture_and_the_files_that_name_them() -> None:
    from pipeline.geometry import resolve_geometry
    from usgan.geometry import POINTS, load_model
    from usgan.texture import load_texture

    shipped = DEFAULT_WEIGHTS.parent / "geometry.safetensors"
    model = load_model(shipped)
    assert model.mean.shape == (POINTS * 2,) and model.displacements.shape == (len(EXPRESSIONS), POINTS * 2)
    assert {"16", "17", "30"} <= set(model.sources["held_out"])  # the evaluation people are left out
    texture = DEFAULT_WEIGHTS.parent / "texture.safetensors"
    assert {"16", "17", "30"} <= set(load_texture(texture).sources["held_out"])
    # the default edit: warp + texture, the generator not run on textured faces (refine gains 0)
    assert resolve_geometry("auto", DEFAULT_WEIGHTS).resolve() == shipped.resolve()
    assert resolve_geometry("auto", DEFAULT_WEIGHTS, key="texture").resolve() == texture.resolve()
    assert set(load_generator(DEFAULT_WEIGHTS)[1].refine_gains.values()) == {0.0}
    warp_trained = DEFAULT_WEIGHTS.parent / "experiments" / "usgan_warp_step356.safetensors"
    assert resolve_geometry("auto", warp_trained).resolve() == shipped.resolve()
    assert load_generator(warp_trained)[1].dataset == "tfeid+london"
