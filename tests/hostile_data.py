"""Hostile datasets, written from scratch: every image quirk a user's folder may hold, and the
records.csv mistakes people make. Used by tests/test_hostile_datasets.py.

`build_hostile(root)` writes one dataset folder holding, side by side:
- good images that need care: 16-bit PNG and TIFF gradients (0..65535), a CMYK JPEG, a palette
  PNG with transparency, an EXIF-rotated JPEG, a greyscale GIF, a plain RGB JPEG, and a record
  without a technique (its category is still a question);
- bad images: truncated, zero-byte, text saved as .jpg, a broken PNG, one over the pixel limit
  (HUGE_LIMIT, set through MICROQA_MAX_PIXELS);
- a record whose image is missing, and an image that belongs to no record.
The record-level mistakes (duplicate ids, missing columns, latin-1 text) get a folder each.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from microqa.data.dataset import RECORD_COLUMNS

HUGE_LIMIT = 2_000_000  # MICROQA_MAX_PIXELS for these datasets; the huge image is 3 MP
SEM = ("Scanning electron microscopy (SEM)", "Metal or alloy")
TEM = ("Transmission electron microscopy (TEM)", "Ceramic")
LIGHT = ("Reflected light microscopy", "Metal or alloy")
AFM = ("Atomic force microscopy (AFM)", "Polymer")


@dataclass
class Hostile:
    root: Path
    good: dict[int, str] = field(default_factory=dict)  # id -> image file (relative)
    bad: dict[int, str] = field(default_factory=dict)  # id -> image file (relative)
    missing: list[int] = field(default_factory=list)  # ids whose image is absent
    orphans: list[str] = field(default_factory=list)  # files that belong to no record
    without_technique: list[int] = field(default_factory=list)

    @property
    def records(self) -> list[int]:
        return sorted([*self.good, *self.bad, *self.missing])


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def gradient_16bit(size=(64, 48)) -> Image.Image:
    """A left-to-right 0..65535 ramp in a 16-bit mode ('I;16'): clipping at 255 would make it
    almost all white."""
    ramp = np.linspace(0, 65535, size[0]).round().astype("<u2")
    image = Image.new("I;16", size)
    image.frombytes(np.tile(ramp, (size[1], 1)).tobytes())
    return image


def good_images() -> dict[str, bytes]:
    """File suffix and bytes of each good-but-unusual image, keyed by a short name."""
    palette = Image.new("P", (64, 48), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette.paste(1, (0, 0, 32, 48))
    palette.paste(2, (32, 0, 48, 48))
    rotated = _noise(seed=3)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "rgb.jpg": _encode(_noise(seed=1), "JPEG", quality=90),
        "gradient16.png": _encode(gradient_16bit(), "PNG"),
        "gradient16.tif": _encode(gradient_16bit(), "TIFF"),
        "cmyk.jpg": _encode(_noise(seed=2).convert("CMYK"), "JPEG", quality=90),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "exif_rotated.jpg": _encode(rotated, "JPEG", exif=exif.tobytes()),
        "grey.gif": _encode(_noise(seed=4).convert("L"), "GIF"),
    }


def bad_images() -> dict[str, bytes]:
    jpeg = _encode(_noise(seed=5), "JPEG", quality=95)
    huge = Image.new("L", (3000, 1000), 128)  # 3 MP of one grey: a small file
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero.png": b"",
        "text.jpg": b"<html><body>Service unavailable</body></html>\n",
        "broken.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "huge.png": _encode(huge, "PNG"),
    }


def _row(number: int, technique: str, categories: str, description: str) -> dict[str, str]:
    row = dict.fromkeys(RECORD_COLUMNS, "")
    row.update(
        micrograph_no=str(number),
        brief_description=description,
        keywords="test",
        categories=categories,
        technique=technique,
        contributor="A. Tester",
    )
    return row


def write_records(root: Path, rows: list[dict[str, str]], *, encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else RECORD_COLUMNS
    path = root / "records.csv"
    with open(path, "w", encoding=encoding, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_hostile(root: Path) -> Hostile:
    """The image-level hostile dataset described in the module doc."""
    hostile = Hostile(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    labels = [SEM, TEM, LIGHT, AFM]
    number = 1
    for i, (name, data) in enumerate(good_images().items()):
        technique, categories = labels[i % len(labels)]
        relative = f"images/{number:06d}{Path(name).suffix}"
        (root / relative).write_bytes(data)
        rows.append(_row(number, technique, categories, f"good specimen {name}"))
        hostile.good[number] = relative
        number += 1
    # A record without a technique: still a category question.
    relative = f"images/{number:06d}.jpg"
    (root / relative).write_bytes(_encode(_noise(seed=9), "JPEG"))
    rows.append(_row(number, "", "Ceramic", "specimen without technique"))
    hostile.good[number] = relative
    hostile.without_technique.append(number)
    number = 11
    for i, (name, data) in enumerate(bad_images().items()):
        technique, categories = labels[i % len(labels)]
        relative = f"images/{number:06d}{Path(name).suffix}"
        (root / relative).write_bytes(data)
        rows.append(_row(number, technique, categories, f"bad specimen {name}"))
        hostile.bad[number] = relative
        number += 1
    rows.append(_row(21, *SEM, "record whose image is missing"))
    hostile.missing.append(21)
    (images / "000099.jpg").write_bytes(_encode(_noise(seed=7), "JPEG"))
    hostile.orphans.append("images/000099.jpg")
    write_records(root, rows)
    return hostile


def _plain_rows(n: int = 3) -> list[dict[str, str]]:
    return [_row(i, *SEM, f"specimen {i}") for i in range(1, n + 1)]


def with_images(root: Path, rows: list[dict[str, str]]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        number = int(row["micrograph_no"]) if row["micrograph_no"].isdigit() else 0
        (root / "images" / f"{number:06d}.jpg").write_bytes(_encode(_noise(seed=number), "JPEG"))
    return root


def duplicate_ids(root: Path) -> Path:
    """Rows 2 and 4 (as a spreadsheet numbers them) share micrograph_no 1."""
    rows = _plain_rows(3)
    rows[2]["micrograph_no"] = "1"
    write_records(root, rows)
    return with_images(root, rows)


def missing_columns(root: Path, drop: tuple[str, ...] = ("technique",)) -> Path:
    rows = [{k: v for k, v in row.items() if k not in drop} for row in _plain_rows(3)]
    write_records(root, rows)
    return with_images(root, _plain_rows(3))


def only_required_columns(root: Path) -> Path:
    """micrograph_no, technique, categories and nothing else: a valid dataset."""
    rows = [
        {k: row[k] for k in ("micrograph_no", "technique", "categories")} for row in _plain_rows(3)
    ]
    write_records(root, rows)
    return with_images(root, _plain_rows(3))


def latin1(root: Path) -> Path:
    """records.csv saved as latin-1: 'µm' in row 3 is the byte 0xb5."""
    rows = _plain_rows(3)
    rows[1]["length_bar"] = "10 µm"
    write_records(root, rows, encoding="latin-1")
    return with_images(root, rows)
