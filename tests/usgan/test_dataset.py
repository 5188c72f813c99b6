"""usgan.dataset: the aligned-crop folder format (expression folders, identities, index.csv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from usgan.dataset import DataError, identity_from_filename, parse_identities, scan_dataset
from usgan.expressions import EXPRESSIONS


def test_scan_maps_codes_and_aliases_to_canonical_expressions(tiny_faces: Path) -> None:
    samples = scan_dataset(tiny_faces)
    assert len(samples) == 16
    by_folder = {s.path.parent.name: s.expression for s in samples}
    assert by_folder == {"angry": "angry", "DIS": "disgusted", "fear": "fearful", "HAS": "happy",
                         "neutral": "neutral", "sadness": "sad", "SUS": "surprised"}
    assert all(s.label == EXPRESSIONS.index(s.expression) for s in samples)


def test_unknown_folder_name_is_a_clear_error(tiny_faces: Path) -> None:
    (tiny_faces / "bored").mkdir()
    with pytest.raises(DataError, match=r"bored: folder name is not an expression"):
        scan_dataset(tiny_faces)


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_data_dirs_are_one_line_errors(tmp_path: Path, make: str) -> None:
    root = tmp_path / "data"
    if make == "empty":
        (root / "happy").mkdir(parents=True)
    if make == "file":
        root.write_text("x")
    with pytest.raises(DataError) as caught:
        scan_dataset(root)
    assert str(root) in str(caught.value) and "\n" not in str(caught.value)


def test_corrupt_image_names_the_file(tiny_faces: Path) -> None:
    broken = tiny_faces / "angry" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        scan_dataset(tiny_faces)


@pytest.mark.parametrize(("name", "identity"), [("0111b01.jpg", "01"), ("3023g12.png", "30"), ("face_001.png", None),
                                                 ("0111z01.png", None)])
def test_identity_from_tfeid_filenames(name: str, identity: str | None) -> None:
    assert identity_from_filename(Path(name)) == identity


def test_index_csv_identities_take_precedence(tiny_faces: Path) -> None:
    first = sorted((tiny_faces / "angry").iterdir())[0]
    (tiny_faces / "index.csv").write_text(f"path,identity,expression,source\nangry/{first.name},alice,angry,x.jpg\n")
    identities = {s.path.name: s.identity for s in scan_dataset(tiny_faces)}
    assert identities[first.name] == "alice"
    assert sum(i == "alice" for i in identities.values()) == 1


def test_identity_lists_are_comma_separated_with_blanks_dropped() -> None:
    assert parse_identities("16, 17,30") == ("16", "17", "30")
    assert parse_identities(" 05 ,, ") == ("05",)
    assert parse_identities("") == ()
