"""pipeline.images: every mode and bit depth in, upright BGR out, and written back the way it came."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline.errors import InputError, OutputError
from pipeline.images import (
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    ImageMeta,
    is_image_path,
    output_mode,
    read_image,
    save_options,
    write_image,
)

H, W = 6, 8
RGB = np.zeros((H, W, 3), np.uint8)
RGB[:, :4] = (255, 0, 0)  # left half red, right half (0, 128, 255)
RGB[:, 4:] = (0, 128, 255)
ALPHA = np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1))
GREY = np.tile(np.arange(0, 240, 40, dtype=np.uint8)[:, None], (1, W))  # rows 0, 40, ..., 200


def bgr(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., ::-1]


def save_mode(path: Path, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Write a small image in `mode`; return the BGR frame and alpha read_image should give."""
    grey_bgr = np.repeat(GREY[..., None], 3, axis=2)
    if mode == "RGB":
        Image.fromarray(RGB).save(path)
        return bgr(RGB), None
    if mode == "RGBA":
        Image.fromarray(np.dstack([RGB, ALPHA])).save(path)
        return bgr(RGB), ALPHA
    if mode == "L":
        Image.fromarray(GREY).save(path)
        return grey_bgr, None
    if mode == "LA":
        Image.fromarray(np.dstack([GREY, ALPHA])).save(path)
        return grey_bgr, ALPHA
    if mode == "P":
        Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
        return bgr(RGB), None
    if mode == "P+transparency":
        image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        index = image.getpixel((0, 0))
        image.save(path, transparency=index)
        return bgr(RGB), np.where(np.arange(W) < 4, 0, 255).astype(np.uint8)[None].repeat(H, 0)
    if mode == "I;16":
        Image.fromarray(GREY.astype(np.uint16) * 257).save(path)  # 16-bit grey PNG
        return grey_bgr, None
    if mode == "RGB16":
        cv2.imwrite(str(path), bgr(RGB).astype(np.uint16) * 257)  # 48-bit colour PNG
        return bgr(RGB), None
    if mode == "1":
        Image.fromarray(GREY > 100).save(path)
        return np.repeat(np.where(GREY > 100, 255, 0).astype(np.uint8)[..., None], 3, axis=2), None
    raise ValueError(mode)


@pytest.mark.parametrize(("mode", "written_mode", "bit_depth"), [
    ("RGB", "RGB", 8), ("RGBA", "RGBA", 8), ("L", "L", 8), ("LA", "LA", 8), ("P", "RGB", 8),
    ("P+transparency", "RGBA", 8), ("I;16", "L", 16), ("RGB16", "RGB", 16), ("1", "L", 8),
])
def test_png_modes_round_trip(tmp_path, mode, written_mode, bit_depth):
    source, output = tmp_path / "in.png", tmp_path / "out.png"
    expected, alpha = save_mode(source, mode)
    frame, meta = read_image(source)
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert np.array_equal(frame, expected)
    assert meta.bit_depth == bit_depth
    assert (meta.alpha is None) == (alpha is None)
    if alpha is not None:
        assert np.array_equal(meta.alpha, alpha)
    write_image(output, frame, meta)
    with Image.open(output) as written:
        assert written.mode == written_mode
    again, meta_again = read_image(output)
    assert np.array_equal(again, expected)
    if alpha is not None:
        assert np.array_equal(meta_again.alpha, alpha)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(path, quality=100)  # cyan 0, magenta+yellow full: red
    frame, meta = read_image(path)
    assert meta.mode == "CMYK" and frame.shape == (H, W, 3)
    b, g, r = frame[2, 2].astype(int)
    assert r > 200 and g < 40 and b < 40
    write_image(tmp_path / "out.jpg", frame, meta)
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.mode == "RGB"


@pytest.mark.parametrize("suffix", list(IMAGE_FORMATS))
def test_every_extension_writes_its_own_format(tmp_path, suffix):
    source = tmp_path / "in.png"
    expected, _ = save_mode(source, "RGB")
    frame, meta = read_image(source)
    output = tmp_path / f"out{suffix}"
    write_image(output, frame, meta)
    with Image.open(output) as written:
        assert written.format == IMAGE_FORMATS[suffix]
    again, _ = read_image(output)
    error = np.abs(again.astype(int) - expected.astype(int))
    assert again.shape == expected.shape
    if suffix == ".webp":  # lossy WebP is always 4:2:0: judge away from the red/blue edge
        error = np.concatenate([error[:, :2], error[:, -2:]], axis=1)
    assert error.max() <= (12 if suffix in (".jpg", ".jpeg", ".webp") else 0)


def test_jpeg_quality_is_high(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "q.jpg", noise)
    with Image.open(tmp_path / "q.jpg") as written:
        tables = written.quantization
        layers = written.layer
    assert tables[0][0] == 2 and max(tables[0]) == 12  # the quality-95 luma table (quality 75 reaches 50+)
    assert layers[0][1:3] == layers[1][1:3]  # 4:4:4: chroma sampled like luma


def test_exif_orientation_is_applied_and_not_applied_twice(tmp_path):
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[0, 0] = (255, 255, 255)  # white at stored top-left
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    exif[0x010F] = "TestCam"  # Make: other tags survive
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes(), quality=100)
    frame, meta = read_image(path)
    assert meta.format == "JPEG"
    assert frame.shape == (4, 2, 3)  # upright: portrait
    assert frame[0, 1].min() > 200  # stored top-left ends at upright top-right
    write_image(tmp_path / "out.jpg", frame, meta)
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.getexif().get(0x0112, 1) == 1 and written.getexif()[0x010F] == "TestCam"
    again, _ = read_image(tmp_path / "out.jpg")
    assert again.shape == (4, 2, 3) and again[0, 1].min() > 200


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_icc_profile_is_kept(tmp_path, suffix):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "in.png"
    Image.fromarray(RGB).save(source, icc_profile=icc, dpi=(300, 300))
    frame, meta = read_image(source)
    assert meta.icc_profile == icc
    write_image(tmp_path / f"out{suffix}", frame, meta)
    with Image.open(tmp_path / f"out{suffix}") as written:
        assert written.info.get("icc_profile") == icc


def test_sixteen_bit_grey_is_scaled_and_rounded(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 257 * 100 + 200, 65535]], np.uint16)).save(path)
    frame, meta = read_image(path)
    assert meta.mode.startswith("I") and frame[0, :, 0].tolist() == [0, 101, 255]


@pytest.mark.parametrize(("mode", "alpha", "format", "expected"), [
    ("RGB", False, "JPEG", "RGB"), ("RGBA", True, "PNG", "RGBA"), ("RGBA", True, "JPEG", "RGB"),
    ("LA", True, "PNG", "LA"), ("LA", True, "WEBP", "RGBA"), ("L", False, "BMP", "L"), ("I;16", False, "TIFF", "L"),
    ("P", True, "BMP", "RGB"), ("CMYK", False, "JPEG", "RGB"),
])
def test_output_mode(mode, alpha, format, expected):
    assert output_mode(mode, alpha, format) == expected


def test_save_options_carry_metadata_where_the_format_can():
    meta = ImageMeta(icc_profile=b"icc", exif=b"exif", dpi=(72.0, 72.0))
    assert save_options("JPEG", meta) == {"icc_profile": b"icc", "exif": b"exif", "dpi": (72.0, 72.0), "quality": 95,
                                        "subsampling": 0}
    assert save_options("TIFF", meta) == {"icc_profile": b"icc", "dpi": (72.0, 72.0), "compression": "tiff_lzw"}
    assert save_options("BMP", meta) == {"dpi": (72.0, 72.0)}
    assert save_options("PNG", ImageMeta()) == {"compress_level": 1}  # lossless; fast zlib level (see images.py)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height but holds no pixels: the size check must fire before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [14000, 20000])
def test_too_large_image_is_a_clear_error(tmp_path, side):
    path = tmp_path / "huge.png"
    png_header_only(path, side, side)
    assert side * side > MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match=r"huge\.png: image is too large.*limit is 178956970"):
        read_image(path)


@pytest.mark.slow
def test_12000_square_image_reads(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (12000, 12000), 7).save(path, compress_level=1)
    frame, meta = read_image(path)
    assert frame.shape == (12000, 12000, 3) and frame[-1, -1, 0] == 7


def bad_image(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.jpg"
    if kind == "text":
        path.write_text("not an image\n" * 10)
    elif kind == "empty":
        path.touch()
    elif kind == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "lab":
        path = tmp_path / "lab.tif"
        Image.new("LAB", (4, 3), (128, 0, 0)).save(path)
    elif kind == "unsupported":
        path = tmp_path / "anim.gif"
        Image.fromarray(RGB).save(path)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "no such file"), ("empty", "empty"), ("text", "not a readable image"),
    ("truncated", "truncated or corrupt"), ("unsupported", "unsupported image extension '.gif'"),
    ("lab", "cannot convert LAB image to RGB"),
])
def test_bad_images_are_one_line_input_errors(tmp_path, kind, message):
    path = bad_image(tmp_path, kind)
    with pytest.raises(InputError, match=message) as caught:
        read_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_write_refuses_input_path_and_unknown_extension(tmp_path):
    source = tmp_path / "in.png"
    save_mode(source, "RGB")
    before = source.read_bytes()
    frame, meta = read_image(source)
    with pytest.raises(OutputError, match="output is the input file"):
        write_image(tmp_path / "sub" / ".." / "in.png", frame, meta)
    with pytest.raises(OutputError, match=r"out\.gif: unsupported image extension"):
        write_image(tmp_path / "out.gif", frame, meta)
    assert source.read_bytes() == before


def test_write_failure_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, format=None, **options):
        fp.write(b"partial")
        raise OSError("encoder failed")
    monkeypatch.setattr(Image.Image, "save", broken_save)
    output = tmp_path / "out.png"
    with pytest.raises(OutputError, match=r"out\.png: cannot encode PNG image \(encoder failed\)"):
        write_image(output, bgr(RGB))
    assert os.listdir(tmp_path) == []


def test_write_checks_the_frame(tmp_path):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 BGR frame"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.float32))


def test_mismatched_alpha_is_dropped_not_crashed(tmp_path):
    meta = ImageMeta(mode="RGBA", alpha=ALPHA)
    write_image(tmp_path / "x.png", np.zeros((3, 3, 3), np.uint8), meta)
    with Image.open(tmp_path / "x.png") as written:
        assert written.mode == "RGB"


@pytest.mark.parametrize(("name", "expected"), [
    ("a.jpg", True), ("b.JPEG", True), ("c.png", True), ("d.tiff", True), ("e.webp", True), ("f.mp4", False),
    ("g.gif", False),
])
def test_is_image_path(name, expected):
    assert is_image_path(Path(name)) is expected
