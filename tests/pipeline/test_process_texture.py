"""The texture step in the processing path: on a real photo with the real detector and landmark net, in torch and
through the ONNX texture graph, only inside the face; --texture auto/off and a bad texture file."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import naming_weights, portrait, psnr, with_geometry
from pipeline.config import SynthesizerConfig, parse_edit
from pipeline.edit import load_models
from pipeline.faces.align import select_faces
from pipeline.process import process_image
from usgan.checkpoint import load_tensors, save_tensors
from usgan.texture import TextureError

SHIPPED_TEXTURE = Path(__file__).resolve().parents[2] / "weights" / "texture.safetensors"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_texture_step_changes_the_warped_face_only_inside_it(weights, shape_models, tmp_path, backend):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), portrait())

    def run(texture: str, name: str):
        config = with_geometry(weights["identity"], shape_models["face"], expression="surprised")
        synthesizer = replace(config.synthesizer, texture=texture, backend=backend,
                              onnx=replace(config.synthesizer.onnx, preference="cpu", cache_dir=str(tmp_path / "o")))
        process_image(photo, tmp_path / name, replace(config, synthesizer=synthesizer))
        return cv2.imread(str(tmp_path / name)).astype(int)

    textured, plain = run(str(SHIPPED_TEXTURE), "t.png"), run("off", "w.png")
    changed = np.abs(textured - plain).max(2) > 8
    x1, y1, x2, y2 = select_faces(load_models(with_geometry(weights["random"], "off")).finder.image_faces(portrait()),
                                  "largest")[0].bbox
    inside = changed[int(y1):int(y2), int(x1):int(x2)].sum()
    changed[int(y1):int(y2), int(x1):int(x2)] = False
    assert inside > 200 and not changed.any()


def test_texture_auto_takes_the_file_the_weights_name_and_a_bad_one_is_one_line(weights, shape_models, tmp_path):
    shutil.copy(SHIPPED_TEXTURE, tmp_path / "texture.safetensors")
    shutil.copy(shape_models["face"], tmp_path / "geometry.safetensors")
    named = naming_weights(weights["random"], tmp_path / "w.safetensors", "geometry.safetensors")
    tensors, metadata = load_tensors(named)
    save_tensors(named, tensors, {**metadata, "texture": "texture.safetensors"})
    edit = parse_edit(with_geometry(named, "auto"))
    assert edit.geometry is not None and edit.texture is not None
    assert parse_edit(replace(with_geometry(named, "auto"), synthesizer=SynthesizerConfig(
        weights=named, texture="off"))).texture is None
    assert parse_edit(with_geometry(named, "off")).texture is None  # no warp, no texture
    (tmp_path / "texture.safetensors").write_bytes(b"not a texture")
    with pytest.raises(TextureError, match=r"texture.safetensors: not a readable texture file"):
        parse_edit(with_geometry(named, "auto"))


def test_a_face_without_geometry_gets_the_generator_alone_even_at_refine_gains_of_zero(weights, shape_models, tmp_path):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), portrait())
    tensors, metadata = load_tensors(weights["random"])
    refining = tmp_path / "w.safetensors"
    save_tensors(refining, tensors, {**metadata, "refine_gains": {"happy": 0.0}})
    config = with_geometry(refining, shape_models["upside"])
    textured = replace(config, synthesizer=replace(config.synthesizer, texture=str(SHIPPED_TEXTURE)))
    result = process_image(photo, tmp_path / "t.png", textured)
    process_image(photo, tmp_path / "off.png", with_geometry(refining, "off"))
    assert (result.faces_edited, result.faces_without_geometry) == (1, 1)
    assert psnr(cv2.imread(str(tmp_path / "t.png")), cv2.imread(str(tmp_path / "off.png"))) > 45
    assert psnr(cv2.imread(str(tmp_path / "t.png")), portrait()) < 45  # the generator did edit it
