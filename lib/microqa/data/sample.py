"""The embedded offline sample `data/sample/`: a seeded selection of the library that covers
its label space, downscaled, with its licence (`python -m microqa sample` / `make sample`).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from microqa import config
from microqa.data import taxonomy
from microqa.data.dataset import (
    IMAGE_COLUMNS,
    RECORD_COLUMNS,
    DatasetError,
    image_info,
    load_records,
    read_records_csv,
    with_image_metadata,
)
from microqa.data.images import FORMAT_EXTENSIONS
from microqa.files import atomic_write_csv, atomic_write_text

SAMPLE_SIZE = 60
SAMPLE_MAX_SIDE = 512
SAMPLE_MAX_BYTES = 5 * 1024 * 1024
# Each technique family keeps at least this many records (when the library has them), so the
# smoke runs see every class more than once; the rest is proportional to the library.
SAMPLE_FAMILY_FLOOR = 4
JPEG_QUALITY = 85
KEEP_BYTES = 64 * 1024  # a small JPEG above this is re-encoded at JPEG_QUALITY
LICENSE_HEADER = """\
# Licence and attribution of the embedded sample

The images and record text in this directory are a small sample of the **DoITPoMS
Micrograph Library**, University of Cambridge (https://www.doitpoms.ac.uk/miclib/),
(c) University of Cambridge. They are redistributed here, downscaled to at most
{max_side} px on the long side (same file format), for non-commercial research and
teaching only, so that the study runs offline.

- Most micrographs are licensed **CC BY-NC-SA** (Creative Commons Attribution-
  NonCommercial-ShareAlike; 2.0 UK: England & Wales, the site's newer pages say 4.0):
  https://creativecommons.org/licenses/by-nc-sa/2.0/uk/ . Derivatives must keep this
  attribution, must not be used commercially, and must be shared under the same licence.
- A few fall under the **DoITPoMS standard terms of use**: non-profit educational use with
  acknowledgement of DoITPoMS, University of Cambridge.
- Copyright in each image and its metadata stays with the contributor and organisation
  named in its record, listed below and in `records.csv` (`contributor`, `organisation`,
  `page_url`). Check a record's page for its exact terms before any reuse.

The MIT licence of the microqa code does **not** apply to these files.

## Records

"""


def _first_by_specimen(candidates: pd.DataFrame, taken: set[str]) -> pd.DataFrame:
    """Candidates whose specimen is not in the sample yet (all of them if none is new)."""
    fresh = candidates[~candidates["specimen_group"].isin(taken)]
    return fresh if len(fresh) else candidates


def _family_targets(df: pd.DataFrame, n: int) -> dict[str, int]:
    """Records per technique family: a floor for small families, the rest proportional."""
    sizes = df["technique_family"].value_counts()
    specimens = df.groupby("technique_family")["specimen_group"].nunique()
    targets = {f: int(min(SAMPLE_FAMILY_FLOOR, specimens[f])) for f in sizes.index}
    rest = n - sum(targets.values())
    if rest < 0:  # tiny n: one per family, largest families first
        targets = {f: 0 for f in sizes.index}
        for f in list(sizes.index)[:n]:
            targets[f] = 1
        return targets
    spare = {f: max(0, sizes[f] - targets[f]) for f in sizes.index}
    total_spare = sum(spare.values()) or 1
    for f in sizes.index:
        targets[f] += int(rest * spare[f] / total_spare)
    for f in sizes.index:  # rounding remainder to the largest families
        if sum(targets.values()) >= n:
            break
        targets[f] += 1
    return targets


def select_sample(df: pd.DataFrame, n: int = SAMPLE_SIZE, *, seed: int = 0) -> pd.DataFrame:
    """A seeded selection of `n` records that covers the label space.

    First one record for each label value, rarest first, in this priority: technique family,
    primary category (incl. "none", which later stages must exclude and count), category
    combination, raw technique string, file format and mode (GIF L/P, BMP, greyscale JPEG:
    the loaders must cope with each). Then each family is filled to its target (see
    `_family_targets`), preferring specimens not yet in the sample, so the images vary.
    """
    if n > len(df):
        raise DatasetError(f"sample of {n} records asked from a dataset of {len(df)}")
    rng = np.random.default_rng(seed)
    pool = df.iloc[rng.permutation(len(df))].copy()  # a seeded order; ties break by it
    pool["_primary"] = pool["primary_category"].fillna("(none)")
    pool["_combination"] = pool["category_set"].map(", ".join)
    pool["_technique"] = pool["technique"].map(taxonomy.normalise)
    pool["_file_kind"] = with_image_metadata(pool)[["image_format", "image_mode"]].agg(
        " ".join, axis=1
    )
    chosen: list[int] = []
    taken: set[str] = set()

    def take(candidates: pd.DataFrame) -> None:
        row = _first_by_specimen(candidates, taken).iloc[0]
        chosen.append(int(row["micrograph_no"]))
        taken.add(row["specimen_group"])

    for column in ("technique_family", "_primary", "_combination", "_technique", "_file_kind"):
        counts = pool[column].value_counts()
        for value in sorted(counts.index, key=lambda v: (counts[v], str(v))):
            if len(chosen) >= n:
                break
            selected = pool[pool["micrograph_no"].isin(chosen)]
            if (selected[column] == value).any():
                continue
            take(pool[pool[column] == value])

    targets = _family_targets(df, n)
    while len(chosen) < n:
        selected = pool[pool["micrograph_no"].isin(chosen)]
        have = selected["technique_family"].value_counts()
        left = pool[~pool["micrograph_no"].isin(chosen)]
        deficit = {
            f: targets[f] - have.get(f, 0) for f in targets if (left["technique_family"] == f).any()
        }
        family = max(deficit, key=lambda f: (deficit[f], targets[f], f))
        take(left[left["technique_family"] == family])
    return df[df["micrograph_no"].isin(chosen)].sort_values("micrograph_no").reset_index(drop=True)


def downscale_image(source: Path, max_side: int = SAMPLE_MAX_SIDE) -> tuple[bytes, str]:
    """Bytes of the image with its long side at most `max_side`, in its true format.

    Files already small enough are kept byte for byte (JPEGs over KEEP_BYTES are re-encoded
    at their size, to fit the sample's byte budget). Larger ones are resized with LANCZOS
    and re-encoded in the same format and mode (palette GIFs are re-quantised to a palette)
    without EXIF, ICC or timestamps, so the output depends only on the input bytes.
    Returns (bytes, extension).
    """
    data = source.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image_format, mode = image.format, image.mode
        if image_format not in FORMAT_EXTENSIONS:
            raise DatasetError(f"{source}: unsupported image format {image_format!r}")
        suffix = "." + FORMAT_EXTENSIONS[image_format]
        if max(image.size) <= max_side and (len(data) <= KEEP_BYTES or image_format != "JPEG"):
            return data, suffix
        scale = min(1.0, max_side / max(image.size))
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        working = image.convert("RGB") if mode == "P" else image
        resized = working.resize(size, Image.Resampling.LANCZOS) if scale < 1 else working.copy()
        if mode == "P":
            resized = resized.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
    out = io.BytesIO()
    if image_format == "JPEG":
        resized.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        resized.save(out, image_format)
    return out.getvalue(), suffix


def build_sample(
    mirror_dir: Path | str,
    out_dir: Path | str,
    *,
    n: int = SAMPLE_SIZE,
    seed: int = 0,
    max_side: int = SAMPLE_MAX_SIDE,
    max_bytes: int = SAMPLE_MAX_BYTES,
) -> pd.DataFrame:
    """Write the embedded sample: `records.csv` (record + image columns), `images/`, `LICENSE.md`.

    Built in a temporary sibling directory and swapped in at the end, so a failure never leaves
    a half-written sample (or removes the previous one). Returns the sample's records.
    """
    mirror_dir, out_dir = Path(mirror_dir).resolve(), Path(out_dir).resolve()
    if out_dir == mirror_dir:
        raise DatasetError(f"--out {out_dir} is the mirror itself; choose another directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_sample(out_dir):
        raise DatasetError(
            f"--out {config.display_path(out_dir)} is not an embedded sample (no LICENSE.md of "
            "one): the builder replaces only a sample it made; choose another folder"
        )
    records = load_records(mirror_dir)  # raises DatasetError naming a bad mirror directory
    # The raw text of each record, copied as is (load_records adds parsed columns).
    source = read_records_csv(mirror_dir / "records.csv")
    sample = select_sample(records, n, seed=seed)

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    try:
        _write_sample(sample, source, staging, max_side, max_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():  # swap: old sample aside, new one in, old one removed
        previous = out_dir.with_name(out_dir.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out_dir)
    return load_records(out_dir)


def _is_sample(folder: Path) -> bool:
    licence = folder / "LICENSE.md"
    heading = LICENSE_HEADER.splitlines()[0]
    return licence.is_file() and licence.read_text(encoding="utf-8").startswith(heading)


def _write_sample(
    sample: pd.DataFrame, source: pd.DataFrame, staging: Path, max_side: int, max_bytes: int
) -> None:
    rows = []
    for _, record in sample.iterrows():
        data, suffix = downscale_image(Path(record["image_path"]), max_side)
        relative = f"images/{int(record['micrograph_no']):06d}{suffix}"
        (staging / relative).write_bytes(data)
        info = image_info(staging / relative)
        if info["image_error"]:
            raise DatasetError(f"{record['image_path']}: {info['image_error']}")
        raw = source[source["micrograph_no"] == record["micrograph_no"]].iloc[0]
        rows.append({**{c: raw.get(c, "") for c in RECORD_COLUMNS}, "image_file": relative, **info})
    table = pd.DataFrame(rows, columns=RECORD_COLUMNS + IMAGE_COLUMNS)
    atomic_write_csv(staging / "records.csv", table, lineterminator="\n")
    atomic_write_text(staging / "LICENSE.md", _license_text(table, max_side))

    total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    if total > max_bytes:
        raise DatasetError(
            f"sample would be {total / 2**20:.2f} MiB, over the {max_bytes / 2**20:.1f} "
            "MiB limit; lower --max-side or --n (the previous sample is untouched)"
        )


def _license_text(table: pd.DataFrame, max_side: int) -> str:
    def cell(value: str) -> str:
        return re.sub(r"\s+", " ", str(value)).replace("|", "/").strip() or "(not given)"

    lines = ["| record | contributor | organisation | source page |", "|---|---|---|---|"]
    for _, row in table.iterrows():
        lines.append(
            f"| {int(row['micrograph_no'])} | {cell(row['contributor'])} | "
            f"{cell(row['organisation'])} | {cell(row['page_url'])} |"
        )
    return LICENSE_HEADER.format(max_side=max_side) + "\n".join(lines) + "\n"


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mirror",
        required=True,
        type=Path,
        help="a dataset directory (records.csv + images/), e.g. ../shared/doitpoms",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the sample (default: data/sample)"
    )
    parser.add_argument("--n", type=int, default=SAMPLE_SIZE, help="number of records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-side",
        type=int,
        default=SAMPLE_MAX_SIDE,
        help="long side of the stored images, in pixels",
    )


def run_cli(args: argparse.Namespace) -> int:
    out = args.out or config.sample_dir()
    try:
        sample = build_sample(args.mirror, out, n=args.n, seed=args.seed, max_side=args.max_side)
    except (DatasetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    families = sample["technique_family"].value_counts().to_dict()
    print(f"wrote {len(sample)} records ({size / 2**20:.2f} MiB) to {out}; families: {families}")
    return 0
