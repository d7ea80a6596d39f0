"""The one image decoder: every micrograph file, for CLIP, the VLMs, the EDA and the galleries.

`open_rgb(path)` returns an 8-bit RGB image whatever the file holds:

- every PIL mode: 1, L, LA, P (palette, with or without transparency), PA, RGBA, CMYK, YCbCr,
  I;16 / I;16B / I (16-bit and 32-bit integer) and F (float). Integer and float images wider
  than 8 bits are *stretched* from their own min..max to 0..255, never clipped at 255 (a
  16-bit SEM image stored 0..65535 would otherwise become almost all white);
- EXIF orientation applied (a phone photograph of a specimen stands as it was taken);
- the first frame of an animated GIF;
- a pixel limit (`MAX_PIXELS`, default 100 MP; `MICROQA_MAX_PIXELS` overrides): a larger image
  raises `ImageError` naming the file, instead of Pillow's bare DecompressionBombError.

`open_rgb(path, min_side=S)` may decode smaller, for a model that needs only S pixels on the
short side (CLIP: 224): a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT (Pillow's draft
mode, several times faster), other formats are box-reduced by an integer factor
(`Image.reduce`), never below S on the short side.

A file that cannot be decoded (zero bytes, truncated, text, unknown format) raises
`ImageError` naming the file and the reason; callers list it and go on.

`inspect_bytes(data)` decodes fully (so truncation shows) and reports the true format, size,
mode and sha256: the scraper names files by it and the dataset checks them with it.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from microqa.files import sha256_bytes

# Pillow format name -> the extension a file of that format carries in a dataset directory.
FORMAT_EXTENSIONS = {"JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "PNG": "png", "TIFF": "tif"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".bmp", ".png", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def max_pixels() -> int:
    value = os.environ.get("MICROQA_MAX_PIXELS", "")
    return int(value) if value.strip().isdigit() else DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageInfo:
    format: str
    extension: str
    width: int
    height: int
    mode: str
    sha256: str


def _open(source, name: str, limit: int | None, min_side: int | None = None) -> Image.Image:
    """Open and fully decode `source` (a path or a file object), within the pixel limit; a JPEG
    at the smallest DCT scale that keeps its short side >= `min_side` (when given)."""
    limit = max_pixels() if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # checked below, with the file's name
            try:
                image = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            if image.width * image.height > limit:
                raise ImageError(
                    f"{name}: {image.width}x{image.height} px is over the limit of {limit:,} "
                    "pixels (set MICROQA_MAX_PIXELS to allow it)"
                )
            image.seek(0)  # first frame of an animated GIF
            if min_side and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))  # keeps both sides >= min_side
            image.load()  # decode fully, so a truncated file fails here
            return image
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError is an OSError; truncation shows as OSError from load()
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a recognised image format"
        raise ImageError(f"{name}: cannot decode image ({type(exc).__name__}: {reason})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded PIL image as 8-bit RGB (wide integer and float images stretched)."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
        pixels = np.nan_to_num(scaled, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(pixels, mode="L").convert("RGB")
    if image.mode in {"P", "PA"} and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        # transparent pixels shown on white, as a viewer shows them
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(
    path: Path | str, *, limit: int | None = None, min_side: int | None = None
) -> Image.Image:
    """Decode an image file to 8-bit RGB, EXIF orientation applied. Raises ImageError.

    `min_side`: the caller needs only this many pixels on the short side; larger images are
    decoded (JPEG) or box-reduced (other formats) to between min_side and twice as much."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: empty file (0 bytes)")
    image = _open(io.BytesIO(data), str(path), limit, min_side)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block: keep the pixels as stored
    image = to_rgb(image)  # wide images stretched on all their pixels, before any reduction
    factor = min(image.size) // min_side if min_side else 1
    return image.reduce(factor) if factor >= 2 else image


def inspect_bytes(data: bytes, *, name: str = "image", limit: int | None = None) -> ImageInfo:
    """True format, size, mode and sha256 of image bytes; ImageError when they do not decode
    completely or hold a format the dataset layout does not use."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    image = _open(io.BytesIO(data), name, limit)
    image_format = image.format or ""
    if image_format not in FORMAT_EXTENSIONS:
        raise ImageError(f"{name}: unsupported image format {image_format!r}")
    return ImageInfo(
        format=image_format,
        extension=FORMAT_EXTENSIONS[image_format],
        width=image.width,
        height=image.height,
        mode=image.mode,
        sha256=sha256_bytes(data),
    )


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the file header only (no decoding)."""
    try:
        with Image.open(path) as handle:
            return handle.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image header ({exc})") from None


def find_image(dataset_dir: Path, micrograph_no: int) -> Path | None:
    """`images/NNNNNN.<ext>` of a record, whatever its extension; None when absent."""
    stem = f"{int(micrograph_no):06d}"
    for suffix in IMAGE_SUFFIXES:
        path = Path(dataset_dir) / "images" / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
