"""Helpers for the scraper tests: a tiny mirror of real image files, file-tree snapshots, CLI."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from microqa.data.dataset import RECORD_COLUMNS
from microqa.files import sha256_file
from tests.conftest import REPO

# id -> (Pillow format, mode) of its image; None: an empty record (page without the container).
# Ids not listed answer 404. Records 1-8 and 12 exist; 9-11 are a gap of missing ids.
TINY_LAYOUT = {
    1: ("JPEG", "RGB"),
    2: ("GIF", "P"),  # served as .jpg, like the site
    3: ("BMP", "RGB"),  # served as .jpg, like the site
    4: ("JPEG", "L"),
    5: None,
    7: ("PNG", "RGB"),
    8: ("JPEG", "RGB"),
    9: None,
    10: None,
    12: ("GIF", "L"),
}
TINY_MISSING_RUN = 4  # longest gap above is 3 (ids 9-11)


def image_bytes(fmt: str, mode: str, seed: int, size=(48, 36)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def record_row(record_id: int, image_ext: str = "jpg") -> dict[str, str]:
    """Fields with the site's quirks: μ, &nbsp; in keywords, literal markup, '&', newlines."""
    return {
        "micrograph_no": str(record_id),
        "brief_description": f"Specimen {record_id}: Cu 70, Zn 30 (wt%) & twins <i>",
        "keywords": "alloy\xa0, brass , copper, twinning\xa0, zinc",
        "categories": "Metal or alloy" if record_id % 2 else "Fracture, Metal or alloy",
        "system": "Cu-Zn",
        "composition": "Cu 70, Zn 30 (wt%)",
        "standard_codes": "" if record_id % 3 else "BS 2870 CZ106",
        "reaction": "",
        "processing": "Cold rolled and annealed at 600 °C",
        "applications": "" if record_id % 2 else "Cartridge cases",
        "sample_preparation": "Etched in K<sub>3</sub>Fe(CN)<sub>6</sub>",
        "technique": "Reflected light microscopy",
        "length_bar": f"{10 * record_id} μm",
        "further_information": f"Line one of record {record_id}.\nLine two, after a newline.",
        "contributor": "Prof T W Clyne",
        "organisation": "Department of Materials Science and Metallurgy, University of Cambridge",
        "image_url": (
            f"https://www.doitpoms.ac.uk/miclib/micrographs/large/{record_id:06d}.{image_ext}"
        ),
        "page_url": f"https://www.doitpoms.ac.uk/miclib/micrograph_record.php?id={record_id}",
    }


def make_mirror(root: Path, layout: dict[int, tuple[str, str] | None] = TINY_LAYOUT) -> Path:
    """A mirror directory like ../shared/doitpoms: records.csv + images/NNNNNN.jpg."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for record_id, image in sorted(layout.items()):
        if image is None:
            empty = {c: "" for c in RECORD_COLUMNS}
            empty["micrograph_no"] = str(record_id)
            empty["page_url"] = record_row(record_id)["page_url"]
            rows.append(empty)
            continue
        # Like the site, the page links GIFs as .gif; the file is stored as .jpg regardless.
        rows.append(record_row(record_id, "gif" if image[0] == "GIF" else "jpg"))
        data = image_bytes(*image, seed=record_id)
        (root / "images" / f"{record_id:06d}.jpg").write_bytes(data)
    with open(root / "records.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RECORD_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_numbered_mirror(root: Path, n: int) -> Path:
    """Ids 1..n, every fifth an empty record, formats cycling JPEG/GIF/BMP."""
    cycle = [("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("JPEG", "L")]
    layout = {i: (None if i % 5 == 0 else cycle[i % 4]) for i in range(1, n + 1)}
    return make_mirror(root, layout)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) -> sha256 of its bytes."""
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "lib"), str(REPO)])
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "microqa", "scrape", *args]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout
    )
