"""Records -> one tidy DataFrame; the active dataset; a seeded stratified sampler.

A dataset directory holds `records.csv` (the columns of the DoITPoMS mirror, plus the
scraper's image columns when it made them) and `images/NNNNNN.<ext>`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import config, provenance, taxonomy

RECORD_COLUMNS = [
    "micrograph_no", "brief_description", "keywords", "categories", "system", "composition",
    "standard_codes", "reaction", "processing", "applications", "sample_preparation",
    "technique", "length_bar", "further_information", "contributor", "organisation",
    "image_url", "page_url",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".bmp", ".png", ".tif", ".tiff")


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
    """Records sharing a brief description are images of one specimen (near-duplicates)."""
    return re.sub(r"\s+", " ", str(brief_description).replace("\xa0", " ")).strip().lower()


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
    df["micrograph_no"] = df["micrograph_no"].astype(int)
    df["category_set"] = df["categories"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["keyword_list"] = df["keywords"].map(lambda v: tuple(taxonomy.split_multi(v)))
    df["technique_family"] = [
        taxonomy.technique_family(t, cats)
        for t, cats in zip(df["technique"], df["category_set"], strict=True)
    ]
    df["technique_coarse"] = df["technique_family"].map(taxonomy.coarse_class)
    df["technique_mode"] = df["technique"].map(taxonomy.technique_mode)
    df["primary_category"] = df["category_set"].map(taxonomy.primary_category)
    df["specimen_group"] = df["brief_description"].map(specimen_key)
    paths = [find_image(dataset_dir, n) for n in df["micrograph_no"]]
    df["image_path"] = [str(p) if p else "" for p in paths]
    if with_images_only:
        df = df[df["image_path"] != ""]
    # Records of one specimen get one integer group id (CV folds keep groups together).
    df["specimen_id"] = pd.factorize(df["specimen_group"])[0]
    return df.sort_values("micrograph_no").reset_index(drop=True)


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
    """Seeded half split by specimen: "select" (choose prompts, thresholds, weights) or "evaluate".

    Every choice the study makes (best prompt set, cascade threshold, fusion weight) is made on
    the "select" half and reported on the "evaluate" half; whole specimens stay on one side so
    near-duplicate images cannot leak a choice. Returns a Series aligned with `df`.
    """
    groups = np.array(sorted(df["specimen_group"].unique()))
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(groups)[: len(groups) // 2])
    return df["specimen_group"].map(lambda g: "select" if g in chosen else "evaluate")
