"""Records -> one tidy DataFrame, validated in one place; the active dataset; taxonomy tables;
a seeded stratified sampler.

A dataset directory (README, "Use it on your own micrographs") holds `records.csv` and
`images/NNNNNN.<ext>`.
Required columns are REQUIRED_COLUMNS; every other column of RECORD_COLUMNS is optional (an
absent one reads as empty). The scraper adds IMAGE_COLUMNS, describing each stored file.

`load_records` raises `DatasetError`, one line naming the file, the row and the fix, for what
makes a dataset unusable (no records.csv, text that is not UTF-8, a missing required column, an
id that is not a number or appears twice). What only affects some records is counted and
listed in the table's `attrs` (see DATASET_NOTES), never dropped without a word.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import config, files
from microqa.data import images, splits, taxonomy

# The record columns of the DoITPoMS mirror, in its order: the one statement of them.
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
FIELD_COLUMNS = RECORD_COLUMNS[1:16]  # the fields a record page shows
# Without these a record cannot be a question: its id, and the labels of the two tasks.
REQUIRED_COLUMNS = ("micrograph_no", "technique", "categories")
# The scraper's image columns (after the record columns), describing the stored file.
IMAGE_COLUMNS = [
    "image_file",
    "image_sha256",
    "image_width",
    "image_height",
    "image_format",
    "image_mode",
    "image_error",
]
ENCODING = "utf-8"  # records.csv is read as UTF-8 (a byte-order mark is allowed), nothing else
# What load_records lists in `df.attrs` (each a list; the notebook and the CLI show them).
DATASET_NOTES = {
    "missing_images": "records without a usable image (ids)",
    "orphan_images": "files in images/ that belong to no record",
    "without_technique": "records without a technique: left out of the technique task only",
    "empty_rows": "rows without any field value (ids the library skips)",
}


log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A dataset that cannot be used; the one-line message names the file, the row, the fix."""


def read_records_csv(csv_path: Path | str) -> pd.DataFrame:
    """records.csv as text columns, every record column present ("" when absent)."""
    csv_path = Path(csv_path)
    name = config.display_path(csv_path)
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode(ENCODING + "-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{name}, line {line}: byte 0x{data[exc.start]:02x} is not {ENCODING.upper()} (the "
            f"encoding records.csv is read in); save the file as {ENCODING.upper()} (e.g. "
            "`iconv -f latin1 -t utf-8`)"
        ) from None
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{name}: empty file; it needs a header row and records") from None
    except pd.errors.ParserError as exc:
        reason = " ".join(str(exc).split())
        raise DatasetError(f"{name}: not a readable CSV ({reason}); check its quoting") from None
    df.columns = [str(column).strip() for column in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{name}: missing required column(s) {', '.join(missing)}; required are "
            f"{', '.join(REQUIRED_COLUMNS)} (every other column is optional)"
        )
    partial = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if partial and len(partial) < len(IMAGE_COLUMNS):
        raise DatasetError(
            f"{name} has some image columns but lacks {partial}; give all of "
            f"{', '.join(IMAGE_COLUMNS)} or none"
        )
    for column in RECORD_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    _check_ids(df, name)
    df["micrograph_no"] = df["micrograph_no"].str.strip().astype(int)
    return df


def _check_ids(df: pd.DataFrame, name: str) -> None:
    """Ids must be whole numbers, each used once (row 2 is the first record, as in a sheet)."""
    ids = df["micrograph_no"].str.strip()
    bad = ids[~ids.str.fullmatch(r"\d+")]
    if len(bad):
        row = int(bad.index[0]) + 2
        more = f" ({len(bad) - 1} more rows like it)" if len(bad) > 1 else ""
        raise DatasetError(
            f"{name}, row {row}: micrograph_no {bad.iloc[0]!r} is not a whole number{more}; "
            "give each record its numeric id"
        )
    numbers = ids.astype(int)
    repeated = numbers[numbers.duplicated(keep=False)]
    if len(repeated):
        first = int(repeated.iloc[0])
        rows = [int(i) + 2 for i in repeated.index[repeated == first]]
        others = sorted(set(repeated) - {first})
        more = f" (also duplicated: {', '.join(map(str, others[:5]))})" if others else ""
        raise DatasetError(
            f"{name}, rows {', '.join(map(str, rows))}: micrograph_no {first} is used more than "
            f"once{more}; each record needs its own id (one image, one truth)"
        )


def load_records(dataset_dir: Path | str, *, with_images_only: bool = True) -> pd.DataFrame:
    """The tidy table: one row per record, parsed labels, image path, specimen group.

    `attrs` lists what concerns only some records (DATASET_NOTES); with `with_images_only`
    the records without a usable image are left out of the rows (and listed there)."""
    dataset_dir = Path(dataset_dir)
    csv_path = dataset_dir / "records.csv"
    if not csv_path.is_file():
        raise DatasetError(
            f"no records.csv in dataset directory {config.display_path(dataset_dir)}; a dataset "
            "holds records.csv and images/NNNNNN.<ext>"
        )
    df = read_records_csv(csv_path)
    name = config.display_path(csv_path)
    df["category_set"] = df["categories"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["keyword_list"] = df["keywords"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["technique_family"] = [
        _family(t, cats, n, name)
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
    empty = ~(df[FIELD_COLUMNS] != "").any(axis=1)
    notes = {
        "missing_images": sorted(df.loc[~empty & (df["image_path"] == ""), "micrograph_no"]),
        "orphan_images": _orphan_images(dataset_dir, set(df["micrograph_no"])),
        "without_technique": sorted(
            df.loc[~empty & df["technique_family"].isna(), "micrograph_no"]
        ),
        "empty_rows": sorted(df.loc[empty, "micrograph_no"]),
    }
    _log_notes(name, notes)
    if with_images_only:
        df = df[df["image_path"] != ""]
    # Records of one specimen get one integer group id (CV folds keep groups together).
    df["specimen_id"] = pd.factorize(df["specimen_group"])[0]
    # The study's two folds, assigned once on the whole dataset so that every subset keeps them.
    df["fold"] = splits.assign_folds(df)
    df = df.sort_values("micrograph_no").reset_index(drop=True)
    df.attrs = {"records_csv": name, **{key: [*map(_plain, v)] for key, v in notes.items()}}
    return df


def _log_notes(name: str, notes: dict[str, list]) -> None:
    """One warning line per record or file concerned (a CLI shows them on stderr)."""
    for number in notes["missing_images"]:
        log.warning("%s: record %s has no usable image in images/ (left out)", name, number)
    for file in notes["orphan_images"]:
        log.warning("%s belongs to no record of %s (ignored)", file, name)
    for number in notes["without_technique"]:
        log.warning("%s: record %s has no technique (left out of the technique task)", name, number)


def _plain(value):
    return int(value) if isinstance(value, np.integer) else value


def _family(technique: str, categories: tuple[str, ...], number: int, name: str) -> str | None:
    try:
        return taxonomy.technique_family(technique, categories)
    except taxonomy.UnmappedLabelError as error:  # same type, now naming file and record
        raise taxonomy.UnmappedLabelError(f"{name}, record {number}: {error}") from None


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
        path = dataset_dir / relative if relative else images.find_image(dataset_dir, number)
        paths.append(str(path) if path is not None and path.is_file() else "")
    return paths


def _orphan_images(dataset_dir: Path, numbers: set[int]) -> list[str]:
    """Files in images/ named for no record (hidden files, such as a viewer's, aside)."""
    folder = dataset_dir / "images"
    if not folder.is_dir():
        return []
    orphans = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = path.stem
        if not (
            stem.isdigit() and int(stem) in numbers and path.suffix.lower() in images.IMAGE_SUFFIXES
        ):
            orphans.append(f"images/{path.name}")
    return orphans


def image_info(path: Path | str) -> dict[str, object]:
    """The image columns for one file: true format, mode, size, sha256 of the bytes.

    A file that does not decode gets its reason in `image_error` (never raised, never dropped).
    """
    path = Path(path)
    data = path.read_bytes()
    info: dict[str, object] = {
        "image_sha256": files.sha256_bytes(data),
        "image_width": pd.NA,
        "image_height": pd.NA,
        "image_format": "",
        "image_mode": "",
        "image_error": "",
    }
    try:
        checked = images.inspect_bytes(data, name=path.name)
        info.update(
            image_width=checked.width,
            image_height=checked.height,
            image_format=checked.format,
            image_mode=checked.mode,
        )
    except images.ImageError as error:
        info["image_error"] = str(error)
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


def limit_for_profile(df: pd.DataFrame, profile: config.Profile, seed: int = 0) -> pd.DataFrame:
    """The smoke profile keeps a stratified subset; the full profile keeps everything."""
    if profile.max_images is None or len(df) <= profile.max_images:
        return df
    return stratified_sample(df, profile.max_images, by="technique_family", seed=seed)


def task_labelled(records: pd.DataFrame) -> pd.DataFrame:
    """The records some evaluation task can score (a label in one of `taxonomy.TASKS`)."""
    labelled = np.zeros(len(records), dtype=bool)
    for column, classes in taxonomy.TASKS.values():
        labelled |= records[column].isin(classes).to_numpy()
    return records[labelled]


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

    The two folds of the study's cross-fitting (`splits.folds_of`: whole specimens, balanced by
    class, assigned on the whole dataset so a subset keeps them); another `seed` reassigns
    them on `df` itself. Returns a Series aligned with `df`.
    """
    folds = splits.folds_of(df) if seed == 0 else splits.assign_folds(df, seed=seed)
    return splits.fold_names(folds)


# --- Taxonomy documentation ------------------------------------------------------------------


def taxonomy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every raw technique string with its record count, family, mode and coarse class.

    "Cross-polarised light microscopy" appears twice: its family is decided per record by the
    material (see microqa.data.taxonomy), so the table shows how many went each way.
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
