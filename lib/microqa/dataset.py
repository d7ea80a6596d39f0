"""Records -> one tidy DataFrame; taxonomy tables; the active dataset; a seeded stratified
sampler; the builder of the embedded offline sample (`python -m microqa sample`).

A dataset directory holds `records.csv` (the columns of the DoITPoMS mirror, plus the
scraper's image columns when it made them) and `images/NNNNNN.<ext>`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from microqa import config, provenance, splits, taxonomy

RECORD_COLUMNS = [
    "micrograph_no",
    "brief_description",
    "keywords",
    "categories",
    "system",
    "composition",
    "standard_codes",
    "reaction",
    "processing",
    "applications",
    "sample_preparation",
    "technique",
    "length_bar",
    "further_information",
    "contributor",
    "organisation",
    "image_url",
    "page_url",
]
# The scraper's image columns (after the 18 record columns), describing the stored file.
IMAGE_COLUMNS = [
    "image_file",
    "image_sha256",
    "image_width",
    "image_height",
    "image_format",
    "image_mode",
    "image_error",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".bmp", ".png", ".tif", ".tiff")
# Pillow format name -> the extension a file of that format carries in a dataset directory.
FORMAT_SUFFIX = {"JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "PNG": ".png", "TIFF": ".tif"}


class DatasetError(RuntimeError):
    """A dataset directory that cannot be read; the message names the path."""


def find_image(dataset_dir: Path, micrograph_no: int) -> Path | None:
    """`images/NNNNNN.<ext>` of a record, whatever its extension; None when absent."""
    stem = f"{int(micrograph_no):06d}"
    for suffix in IMAGE_SUFFIXES:
        path = dataset_dir / "images" / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def specimen_key(brief_description: str) -> str:
    """Records sharing a brief description are images of one specimen (see `splits`)."""
    return splits.specimen_key(brief_description)


def load_records(dataset_dir: Path | str, *, with_images_only: bool = True) -> pd.DataFrame:
    """The tidy table: one row per record, parsed labels, image path, specimen group."""
    dataset_dir = Path(dataset_dir)
    csv_path = dataset_dir / "records.csv"
    if not csv_path.is_file():
        raise DatasetError(f"no records.csv in dataset directory {dataset_dir}")
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [c for c in ("micrograph_no", "technique", "categories") if c not in df.columns]
    if missing:
        raise DatasetError(f"{csv_path} lacks columns {missing}")
    partial = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if partial and len(partial) < len(IMAGE_COLUMNS):
        raise DatasetError(f"{csv_path} has some image columns but lacks {partial}")
    bad_ids = df.loc[~df["micrograph_no"].str.strip().str.fullmatch(r"\d+"), "micrograph_no"]
    if len(bad_ids):
        raise DatasetError(f"{csv_path}: micrograph_no not an integer: {bad_ids.tolist()[:5]}")
    df["micrograph_no"] = df["micrograph_no"].astype(int)
    df["category_set"] = df["categories"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["keyword_list"] = df["keywords"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["technique_family"] = [
        _family(t, cats, n, csv_path)
        for t, cats, n in zip(df["technique"], df["category_set"], df["micrograph_no"], strict=True)
    ]
    df["technique_family"] = taxonomy.with_photograph_rule(df)  # macro photographs: Other
    df["technique_coarse"] = df["technique_family"].map(taxonomy.coarse_class)
    df["technique_mode"] = df["technique"].map(taxonomy.technique_mode)
    df["primary_category"] = df["category_set"].map(taxonomy.primary_category)
    df["specimen_group"] = splits.specimen_groups(df)
    df["image_path"] = _image_paths(dataset_dir, df)
    if "image_file" in df.columns:  # the scraper's image columns: typed, "" -> missing
        for column in ("image_width", "image_height"):
            df[column] = pd.to_numeric(df[column].replace("", None)).astype("Int64")
    if with_images_only:
        df = df[df["image_path"] != ""]
    # Records of one specimen get one integer group id (CV folds keep groups together).
    df["specimen_id"] = pd.factorize(df["specimen_group"])[0]
    return df.sort_values("micrograph_no").reset_index(drop=True)


def _family(technique: str, categories: tuple[str, ...], number: int, csv_path: Path) -> str | None:
    try:
        return taxonomy.technique_family(technique, categories)
    except taxonomy.UnmappedLabelError as error:  # same type, now naming file and record
        raise taxonomy.UnmappedLabelError(f"{csv_path}, record {number}: {error}") from None


def _image_paths(dataset_dir: Path, df: pd.DataFrame) -> list[str]:
    """Each record's usable image: the scraper's `image_file` when given, else
    `images/NNNNNN.*`; "" when the file is absent or the scraper recorded an image_error."""
    scraped = "image_file" in df.columns
    paths = []
    for i, number in enumerate(df["micrograph_no"]):
        if scraped and df["image_error"].iat[i].strip():
            paths.append("")
            continue
        relative = df["image_file"].iat[i] if scraped else ""
        path = dataset_dir / relative if relative else find_image(dataset_dir, number)
        paths.append(str(path) if path is not None and path.is_file() else "")
    return paths


def image_info(path: Path | str) -> dict[str, object]:
    """The image columns for one file: true format, mode, size, sha256 of the bytes.

    A file Pillow cannot decode gets its reason in `image_error` (never raised, never dropped).
    """
    path = Path(path)
    data = path.read_bytes()
    info: dict[str, object] = {
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "image_width": pd.NA,
        "image_height": pd.NA,
        "image_format": "",
        "image_mode": "",
        "image_error": "",
    }
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode fully, so truncated files are caught here
            info.update(
                image_width=image.width,
                image_height=image.height,
                image_format=image.format or "",
                image_mode=image.mode,
            )
    except Exception as error:  # Pillow raises many types for bad files; keep the reason
        info["image_error"] = f"{type(error).__name__}: {error}"
    return info


def with_image_metadata(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the image columns filled in, computed from the files where records.csv lacks
    them (the raw mirror has none; a scraped dataset has them all, so nothing is read).
    """
    out = df.copy()
    for column in IMAGE_COLUMNS:
        if column not in out.columns:
            out[column] = pd.NA if column in ("image_width", "image_height") else ""
    out["image_width"] = out["image_width"].astype("Int64")
    out["image_height"] = out["image_height"].astype("Int64")
    todo = (out["image_path"] != "") & (out["image_format"].fillna("") == "")
    computed = [
        {**image_info(path), "image_file": f"images/{Path(path).name}"}
        for path in out.loc[todo, "image_path"]
    ]
    if computed:
        out.loc[todo, IMAGE_COLUMNS] = pd.DataFrame(computed, index=out.index[todo])[IMAGE_COLUMNS]
    return out


def active_dataset_dir() -> Path:
    """The dataset notebook 01 chose for this run (see its provenance record)."""
    data = provenance.load().get("data", {})
    if "dataset_dir" not in data:
        raise DatasetError(
            f"no dataset recorded in {provenance.record_path()}; run notebook 01 (make reproduce)"
        )
    return Path(data["dataset_dir"])


def data_substitutes() -> list[str]:
    """Labels for titles: 'sample data' when the run fell back to the embedded sample."""
    return ["sample data"] if provenance.load().get("data", {}).get("source") == "sample" else []


def limit_for_profile(df: pd.DataFrame, profile: config.Profile, seed: int = 0) -> pd.DataFrame:
    """The smoke profile keeps a stratified subset; the full profile keeps everything."""
    if profile.max_images is None or len(df) <= profile.max_images:
        return df
    return stratified_sample(df, profile.max_images, by="technique_family", seed=seed)


def stratified_sample(
    df: pd.DataFrame, n: int | str | None, *, by: str = "technique_family", seed: int = 0
) -> pd.DataFrame:
    """A seeded sample of `n` rows stratified by `by` ('all' or None: every row).

    Allocation is proportional with at least one row per non-empty stratum (so tiny classes
    such as AFM are always present), then trimmed/filled deterministically to exactly n.
    """
    if n is None or n == "all" or int(n) >= len(df):
        return df.copy()
    n = int(n)
    rng = np.random.default_rng(seed)
    strata = {k: g for k, g in df.groupby(df[by].fillna("<none>"), sort=True)}
    quota = {k: max(1, round(n * len(g) / len(df))) for k, g in strata.items()}
    while sum(quota.values()) > n:  # trim the largest strata first
        largest = max(quota, key=lambda k: (quota[k], k))
        quota[largest] -= 1
    while sum(quota.values()) < n:  # fill strata that still have rows, largest first
        open_ = [k for k in quota if quota[k] < len(strata[k])]
        quota[max(open_, key=lambda k: (len(strata[k]) - quota[k], k))] += 1
    picked = [
        g.iloc[rng.permutation(len(g))[: quota[k]]] for k, g in strata.items() if quota[k] > 0
    ]
    return pd.concat(picked).sort_values("micrograph_no").reset_index(drop=True)


def selection_split(df: pd.DataFrame, *, seed: int = 0) -> pd.Series:
    """Each record's fold by specimen, named "select" (fold 0) or "evaluate" (fold 1).

    The two folds of the study's cross-fitting (`splits.assign_folds`: a seeded hash of the
    specimen key, so whole specimens stay on one side and no other specimen moves one).
    Returns a Series aligned with `df`.
    """
    return splits.fold_names(splits.assign_folds(df, seed=seed))


# --- Taxonomy documentation ------------------------------------------------------------------


def taxonomy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every raw technique string with its record count, family, mode and coarse class.

    "Cross-polarised light microscopy" appears twice: its family is decided per record by the
    material (see microqa.taxonomy), so the table shows how many went each way.
    """
    table = (
        df.assign(
            technique=df["technique"].map(lambda t: re.sub(r"\s+", " ", str(t)).strip()),
            technique_coarse=df["technique_coarse"].fillna("(excluded)"),
        )
        .groupby(
            ["technique", "technique_family", "technique_mode", "technique_coarse"], dropna=False
        )
        .size()
        .rename("n")
        .reset_index()
    )
    family_order = {f: i for i, f in enumerate(taxonomy.ALL_FAMILIES)}
    table["_order"] = table["technique_family"].map(family_order)
    table = table.sort_values(["_order", "n", "technique"], ascending=[True, False, True])
    return (
        table[["technique", "n", "technique_family", "technique_mode", "technique_coarse"]]
        .rename(
            columns={
                "technique_family": "family",
                "technique_mode": "mode",
                "technique_coarse": "coarse_class",
            }
        )
        .reset_index(drop=True)
    )


def category_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every category combination with its record count and the primary category it maps to."""
    table = (
        df.assign(
            combination=df["category_set"].map(lambda s: ", ".join(s) if s else "(none)"),
            primary_category=df["primary_category"].fillna("(excluded)"),
        )
        .groupby(["combination", "primary_category"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["n", "combination"], ascending=[False, True])
    )
    table["n_labels"] = table["combination"].map(
        lambda c: 0 if c == "(none)" else len(c.split(", "))
    )
    return table[["combination", "n", "n_labels", "primary_category"]].reset_index(drop=True)


# --- The embedded offline sample -------------------------------------------------------------

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
        if image_format not in FORMAT_SUFFIX:
            raise DatasetError(f"{source}: unsupported image format {image_format!r}")
        suffix = FORMAT_SUFFIX[image_format]
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
    records = load_records(mirror_dir)  # raises DatasetError naming a bad mirror directory
    # The raw text of each record, copied as is (load_records adds parsed columns).
    source = pd.read_csv(mirror_dir / "records.csv", dtype=str, keep_default_na=False)
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
        raw = source[source["micrograph_no"].astype(int) == record["micrograph_no"]].iloc[0]
        rows.append({**{c: raw.get(c, "") for c in RECORD_COLUMNS}, "image_file": relative, **info})
    table = pd.DataFrame(rows, columns=RECORD_COLUMNS + IMAGE_COLUMNS)
    table.to_csv(staging / "records.csv", index=False, lineterminator="\n", encoding="utf-8")
    (staging / "LICENSE.md").write_text(_license_text(table, max_side), encoding="utf-8")

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
        print(f"microqa sample: {error}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    families = sample["technique_family"].value_counts().to_dict()
    print(f"wrote {len(sample)} records ({size / 2**20:.2f} MiB) to {out}; families: {families}")
    return 0
