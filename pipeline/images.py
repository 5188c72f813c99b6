"""Still-image I/O: read any common mode and bit depth as an upright BGR uint8 Frame plus what is needed to write the
result back the way it came (alpha, grey, ICC profile, EXIF, dpi), atomically.

Decisions: EXIF orientation is applied on read (the user sees the upright image) and reset to 1 on write. Grey and
16-bit grey in -> 8-bit grey out; 16-bit colour in -> 8-bit colour out (Frames are 8-bit). Palette (P) in -> RGB(A)
out, since edited pixels leave the palette. CMYK in -> sRGB out (through its ICC profile when it has one).
LAB is refused (Pillow would convert it with wrong colours).
Alpha is kept aside and restored where the format holds it (PNG, WebP, TIFF); JPEG and BMP drop it.
ICC profiles are kept for every format but BMP; EXIF for JPEG, PNG and WebP (TIFF tags are not carried).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError, OutputError, os_reason
from pipeline.files import check_input_file, check_output_path
from pipeline.types import Frame
from usgan.files import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_FORMATS: dict[str, str] = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}
"""Supported extension -> Pillow format (the output format always follows the extension)."""
ALPHA_FORMATS: frozenset[str] = frozenset({"PNG", "WEBP", "TIFF"})
GREY_ALPHA_FORMATS: frozenset[str] = frozenset({"PNG", "TIFF"})  # WebP has no grey+alpha mode: written as RGBA
GREY_MODES: frozenset[str] = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
CONVERTIBLE_MODES: frozenset[str] = frozenset({"CMYK", "YCbCr", "HSV"})
SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
MAX_IMAGE_PIXELS = 178_956_970
"""Largest image read (about 13377 x 13377; 12000 x 12000 works). It equals Pillow's own hard decompression-bomb
limit (2 x Image.MAX_IMAGE_PIXELS), so Pillow's global is left alone. A BGR frame this size takes ~540 MB."""
JPEG_QUALITY = 95
WEBP_QUALITY = 95
# PNG is lossless at any level; level 1 writes about 5x faster than Pillow's default 6 for files about 10 % larger,
# and the writer is part of convert's per-image time.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """What read_image keeps to write the result back faithfully. alpha is (H, W) uint8, upright like the frame."""

    source: Path | None = None
    format: str = "PNG"
    mode: str = "RGB"
    bit_depth: int = 8
    alpha: NDArray[np.uint8] | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    dpi: tuple[float, float] | None = None


def is_image_path(path: Path) -> bool:
    """True when path has a supported image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_FORMATS


def image_format(path: Path) -> str:
    """Pillow format for path's extension; unsupported extensions are a one-line error naming the file."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise OutputError(f"{path}: unsupported image extension {suffix!r}; use one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


# --- reading ---


def open_image(path: Path) -> Image.Image:
    """Image.open with size checked before any pixel is decoded; Pillow errors become InputError."""
    try:
        with warnings.catch_warnings():
            # Between 89 and 179 Mpx Pillow warns of a decompression bomb; our own limit below is the real guard.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise InputError(f"{path}: image is too large ({error}); the limit is {MAX_IMAGE_PIXELS} pixels") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{path}: not a readable image file ({first_line(error)})") from error
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise InputError(f"{path}: image is too large ({width}x{height} = {width * height} pixels; "
                         f"the limit is {MAX_IMAGE_PIXELS})")
    return image


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_upright(image: Image.Image, path: Path) -> Image.Image:
    """Decode the pixels and apply the EXIF orientation in place; truncated or corrupt data is an InputError."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: image data is truncated or corrupt ({first_line(error)})") from error
    return image


def source_bit_depth(image: Image.Image) -> int:
    """16 for 16-bit grey modes and 16-bit-per-channel PNG/TIFF (which Pillow reduces to 8-bit RGB), else 8."""
    if image.mode in SIXTEEN_BIT_MODES:
        return 16
    rawmode = image.tile[0][3] if image.tile and len(image.tile[0]) > 3 else ""
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    return 16 if isinstance(rawmode, str) and ";16" in rawmode else 8


def to_srgb(image: Image.Image) -> Image.Image:
    """CMYK, YCbCr and HSV to RGB; CMYK through its embedded ICC profile when there is one."""
    if image.mode not in CONVERTIBLE_MODES:
        # Pillow's LAB -> RGB is a plain channel copy (wrong colours); refuse rather than guess.
        raise ValueError(f"{image.mode} images are not supported; convert to RGB first")
    icc = image.info.get("icc_profile")
    if image.mode == "CMYK" and icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError) as error:
            log.warning("CMYK ICC profile unusable (%s); converting without it", first_line(error))
    return image.convert("RGB")


def grey_to_uint8(image: Image.Image) -> NDArray[np.uint8]:
    """(H, W) uint8 from any grey mode; 16-bit values are scaled by 255/65535 and rounded."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 257.0
    elif image.mode == "F":
        values = np.asarray(image)  # float images carry 0-255 data in practice; clipped below
    else:
        return np.asarray(image.convert("L"))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def pixel_planes(image: Image.Image) -> tuple[Frame, NDArray[np.uint8] | None]:
    """(H, W, 3) BGR uint8 and the (H, W) alpha plane or None, for every Pillow mode."""
    mode = image.mode
    if mode in GREY_MODES:
        grey = grey_to_uint8(image)
        alpha = np.asarray(image.getchannel("A")) if mode in ("LA", "La") else None
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), alpha
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("RGBa", "RGBX"):
        image = image.convert("RGBA" if mode == "RGBa" else "RGB")
    elif mode not in ("RGB", "RGBA"):
        image = to_srgb(image)
    rgb = np.asarray(image)
    alpha = np.ascontiguousarray(rgb[..., 3]) if image.mode == "RGBA" else None
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2BGR), alpha


def convert_pixels(image: Image.Image, path: Path) -> tuple[Frame, NDArray[np.uint8] | None]:
    """pixel_planes with Pillow's conversion failures (exotic modes) as InputError."""
    try:
        return pixel_planes(image)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot convert {image.mode} image to RGB ({first_line(error)})") from error


def image_meta(path: Path, image: Image.Image, mode: str, bit_depth: int, alpha) -> ImageMeta:
    # A TIFF's getexif() is its own IFD (strip offsets, bits per sample...), not camera EXIF: never carry it.
    exif = image.getexif() if image.format != "TIFF" else Image.Exif()
    icc = image.info.get("icc_profile") if mode != "CMYK" else None  # a CMYK profile no longer fits sRGB output
    dpi = image.info.get("dpi")
    return ImageMeta(
        source=path, format=image.format or IMAGE_FORMATS.get(path.suffix.lower(), "PNG"), mode=mode,
        bit_depth=bit_depth, alpha=alpha, icc_profile=icc or None, exif=exif.tobytes() if len(exif) else None,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
    )


def read_image(path: Path) -> tuple[Frame, ImageMeta]:
    """Read an image as an upright (EXIF-rotated) BGR uint8 frame and the metadata write_image needs."""
    return read_checked(check_input_file(Path(path)))


def read_checked(path: Path) -> tuple[Frame, ImageMeta]:
    """read_image of a file its caller has checked already."""
    if not is_image_path(path):
        raise InputError(f"{path}: unsupported image extension {path.suffix!r}; use one of {', '.join(IMAGE_FORMATS)}")
    with open_image(path) as image:
        mode, bit_depth = image.mode, source_bit_depth(image)
        load_upright(image, path)
        frame, alpha = convert_pixels(image, path)
        warn_if_reduced(path, mode, bit_depth)
        return frame, image_meta(path, image, mode, bit_depth, alpha)


def warn_if_reduced(path: Path, mode: str, bit_depth: int) -> None:
    """Say what reading lost: 16 bits per channel become 8, CMYK becomes RGB."""
    if bit_depth > 8:
        log.warning("%s: %d-bit image: edited and written with 8 bits per channel", path, bit_depth)
    if mode == "CMYK":
        log.warning("%s: CMYK image: edited and written as RGB (sRGB)", path)


# --- writing ---


def output_mode(source_mode: str, has_alpha: bool, format: str) -> str:
    """Pillow mode to write: grey stays grey, alpha is kept where the format holds it."""
    grey = source_mode in GREY_MODES
    alpha = has_alpha and format in ALPHA_FORMATS
    if grey and alpha:
        return "LA" if format in GREY_ALPHA_FORMATS else "RGBA"
    if grey:
        return "L"
    return "RGBA" if alpha else "RGB"


def save_options(format: str, meta: ImageMeta) -> dict[str, object]:
    """Pillow save() keywords: high quality, and ICC/EXIF/dpi where the format carries them."""
    carried = {"icc_profile": meta.icc_profile, "exif": meta.exif, "dpi": meta.dpi}
    if format == "TIFF":
        carried.pop("exif")  # Pillow merges EXIF into the TIFF's own IFD, where its tags can clash with the image's
    if format == "BMP":
        carried = {"dpi": meta.dpi}
    options: dict[str, object] = {key: value for key, value in carried.items() if value}
    if format == "JPEG":
        # 4:4:4 chroma: edited faces put sharp colour edges (lips, eyes) where 4:2:0 would bleed.
        options.update(quality=JPEG_QUALITY, subsampling=0)
    elif format == "PNG":
        options.update(compress_level=PNG_COMPRESS_LEVEL)
    elif format == "WEBP":
        options.update(quality=WEBP_QUALITY, method=4)
    elif format == "TIFF":
        options.update(compression="tiff_lzw")
    return options


def check_image_frame(frame: Frame, path: Path) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}"
        raise ValueError(f"{path}: expected an (H, W, 3) uint8 BGR frame, got {got}")


def to_pil(frame: Frame, meta: ImageMeta, format: str, path: Path) -> Image.Image:
    """The frame in the mode output_mode picks, with alpha restored when it still fits the frame."""
    alpha = meta.alpha
    if alpha is not None and alpha.shape != frame.shape[:2]:
        log.warning("%s: alpha %s does not match frame %s; writing without alpha", path, alpha.shape, frame.shape[:2])
        alpha = None
    mode = output_mode(meta.mode, alpha is not None, format)
    if alpha is not None and mode in ("RGB", "L"):
        log.info("%s: %s cannot hold transparency; alpha dropped", path, format)
    if mode.startswith("L"):
        planes = [cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)]
    else:
        planes = list(cv2.split(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    if mode.endswith("A"):
        planes.append(alpha)
    return Image.fromarray(np.dstack(planes) if len(planes) > 1 else planes[0])  # mode follows the shape


def write_image(path: Path, frame: Frame, meta: ImageMeta | None = None) -> None:
    """Write frame (BGR uint8) to path in the format its extension names, atomically (temp file + rename)."""
    path, meta = Path(path), meta or ImageMeta()
    image_format(path)
    check_output_path(path, meta.source)
    write_checked(path, frame, meta)


def write_checked(path: Path, frame: Frame, meta: ImageMeta) -> None:
    """write_image to a path its caller has checked already."""
    format = image_format(path)
    check_image_frame(frame, path)
    data = encode_image(to_pil(frame, meta, format, path), format, save_options(format, meta), path)
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise OutputError(f"{path}: cannot write {format} image: {os_reason(error)}") from error


def encode_image(image: Image.Image, format: str, options: dict[str, object], path: Path) -> bytes:
    """The encoded file in memory, so that its size is known before anything is written."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=format, **options)
    except (OSError, ValueError) as error:
        raise OutputError(f"{path}: cannot encode {format} image ({first_line(error)})") from error
    if not buffer.tell():
        raise OutputError(f"{path}: the {format} encoder produced no data")
    return buffer.getvalue()
