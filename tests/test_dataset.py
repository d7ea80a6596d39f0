"""dataset.py: tidy records, image metadata, taxonomy tables, sampler, split, embedded sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microqa.data import dataset, taxonomy
from tests.conftest import MIRROR, REPO, needs_mirror

SAMPLE = REPO / "data" / "sample"
MAGIC = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"\x89PNG": "PNG"}


def magic_format(path: Path) -> str:
    head = Path(path).read_bytes()[:4]
    return next(fmt for magic, fmt in MAGIC.items() if head.startswith(magic))


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return dataset.load_records(SAMPLE)


@pytest.fixture(scope="module")
def mirror() -> pd.DataFrame:
    return dataset.load_records(MIRROR)


# --- load_records ----------------------------------------------------------------------------


@needs_mirror()
def test_load_records_on_the_raw_mirror(mirror):
    everything = dataset.load_records(MIRROR, with_images_only=False)
    assert len(everything) == len(pd.read_csv(MIRROR / "records.csv"))
    assert len(mirror) == len(list((MIRROR / "images").iterdir()))
    assert mirror["micrograph_no"].is_monotonic_increasing
    assert mirror["technique_family"].isin(taxonomy.ALL_FAMILIES).all()
    assert "image_format" not in mirror.columns  # the raw mirror has no image columns


@needs_mirror()
def test_image_metadata_of_the_mirror_is_the_true_format(mirror):
    # A seeded subset keeps this fast; the GIF/BMP files named .jpg must come out as such.
    subset = mirror.iloc[np.random.default_rng(0).permutation(len(mirror))[:120]]
    subset = pd.concat([subset, mirror[mirror["micrograph_no"].isin([850, 864])]])
    meta = dataset.with_image_metadata(subset)
    assert (meta["image_error"] == "").all()
    for _, row in meta.iterrows():
        assert row["image_format"] == magic_format(row["image_path"]), row["image_path"]
        with Image.open(row["image_path"]) as image:
            assert (row["image_width"], row["image_height"]) == image.size
            assert row["image_mode"] == image.mode
    assert {"GIF", "BMP", "JPEG"} <= set(meta["image_format"])


def test_load_records_reads_the_scraper_columns(sample):
    assert list(pd.read_csv(SAMPLE / "records.csv").columns) == (
        dataset.RECORD_COLUMNS + dataset.IMAGE_COLUMNS
    )
    assert str(sample["image_width"].dtype) == "Int64"
    for _, row in sample.iterrows():
        assert Path(row["image_path"]) == SAMPLE / row["image_file"]
        info = dataset.image_info(row["image_path"])  # the columns describe the stored file
        for column, value in info.items():
            assert row[column] == value, (row["image_file"], column)
    # Nothing to recompute: the scraped columns are used as they are.
    assert dataset.with_image_metadata(sample)[dataset.IMAGE_COLUMNS].equals(
        sample[dataset.IMAGE_COLUMNS]
    )


def test_missing_or_broken_inputs_are_named(tmp_path):
    with pytest.raises(dataset.DatasetError, match=str(tmp_path)):
        dataset.load_records(tmp_path)
    (tmp_path / "records.csv").write_text("micrograph_no,brief_description\n1,x\n")
    with pytest.raises(
        dataset.DatasetError, match="missing required column.s. technique, categories"
    ):
        dataset.load_records(tmp_path)
    (tmp_path / "records.csv").write_text(
        "micrograph_no,technique,categories,keywords,brief_description\n7x,SEM,Ceramic,,a\n"
    )
    with pytest.raises(dataset.DatasetError, match="7x"):
        dataset.load_records(tmp_path)
    (tmp_path / "records.csv").write_text(
        "micrograph_no,technique,categories,keywords,brief_description\n7,Raman,Ceramic,,a\n"
    )
    with pytest.raises(taxonomy.UnmappedLabelError, match=r"records.csv, record 7: .*Raman"):
        dataset.load_records(tmp_path)
    broken = tmp_path / "000001.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    info = dataset.image_info(broken)
    assert info["image_error"] and info["image_format"] == ""


def test_records_with_an_image_error_have_no_usable_image(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "d")
    raw = pd.read_csv(tmp_path / "d" / "records.csv", dtype=str, keep_default_na=False)
    raw.loc[0, "image_error"] = "OSError: image file is truncated"
    raw.to_csv(tmp_path / "d" / "records.csv", index=False)
    everything = dataset.load_records(tmp_path / "d", with_images_only=False)
    assert everything.loc[0, "image_path"] == "" and len(everything) == len(raw)
    assert len(dataset.load_records(tmp_path / "d")) == len(raw) - 1
    raw.drop(columns=["image_mode"]).to_csv(tmp_path / "d" / "records.csv", index=False)
    with pytest.raises(dataset.DatasetError, match="image_mode"):
        dataset.load_records(tmp_path / "d")


def test_with_image_metadata_finds_a_gif_named_jpg(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "d")
    raw = pd.read_csv(tmp_path / "d" / "records.csv", dtype=str, keep_default_na=False)
    gif = raw[raw["image_format"] == "GIF"].iloc[0]
    number = int(gif["micrograph_no"])
    # Rewrite as the raw mirror does: no image columns, the GIF under a .jpg name.
    (tmp_path / "d" / gif["image_file"]).rename(tmp_path / "d" / "images" / f"{number:06d}.jpg")
    raw[dataset.RECORD_COLUMNS].to_csv(tmp_path / "d" / "records.csv", index=False)
    df = dataset.with_image_metadata(dataset.load_records(tmp_path / "d"))
    row = df[df["micrograph_no"] == number].iloc[0]
    assert (row["image_format"], row["image_file"]) == ("GIF", f"images/{number:06d}.jpg")
    assert row["image_sha256"] == gif["image_sha256"]


# --- taxonomy tables -------------------------------------------------------------------------


def test_taxonomy_and_category_tables_account_for_every_record(sample):
    table = dataset.taxonomy_table(sample)
    assert table["n"].sum() == len(sample)
    for _, row in table.iterrows():
        assert row["family"] in taxonomy.ALL_FAMILIES
        assert row["coarse_class"] == (taxonomy.coarse_class(row["family"]) or "(excluded)")
    cats = dataset.category_table(sample)
    assert cats["n"].sum() == len(sample)
    assert cats["combination"].is_unique
    assert "(excluded)" in set(cats["primary_category"])  # "Device" has no material


@needs_mirror()
def test_taxonomy_table_of_the_mirror_splits_cross_polarised(mirror):
    table = dataset.taxonomy_table(mirror)
    assert table["technique"].map(taxonomy.normalise).nunique() == 24
    cross = table[table["technique"] == "Cross-polarised light microscopy"]
    # macroscopic photographs between crossed polarisers are Other (taxonomy.macroscopic_photograph)
    assert set(cross["family"]) == {
        taxonomy.OPTICAL_REFLECTED,
        taxonomy.OPTICAL_TRANSMITTED,
        taxonomy.OTHER,
    }


# --- sampler and split -----------------------------------------------------------------------


def synthetic(n_big: int = 200) -> pd.DataFrame:
    families = ["SEM"] * n_big + ["TEM"] * 30 + ["AFM"] * 2
    return pd.DataFrame(
        {
            "micrograph_no": range(len(families)),
            "technique_family": families,
            "specimen_group": [f"s{i // 3}" for i in range(len(families))],
        }
    )


def test_stratified_sample_is_seeded_exact_and_keeps_tiny_classes():
    df = synthetic()
    a = dataset.stratified_sample(df, 25, seed=1)
    assert len(a) == 25
    assert a.equals(dataset.stratified_sample(df, 25, seed=1))
    assert not a.equals(dataset.stratified_sample(df, 25, seed=2))
    counts = a["technique_family"].value_counts()
    assert counts["AFM"] >= 1  # 2 of 232 would round to zero proportionally
    assert counts["SEM"] > counts["TEM"] > 0  # still proportional for the rest
    assert dataset.stratified_sample(df, "all").equals(df)


def test_selection_split_keeps_specimens_on_one_side(sample):
    split = dataset.selection_split(sample, seed=0)
    assert set(split) == {"select", "evaluate"}
    assert (sample.assign(side=split).groupby("specimen_group")["side"].nunique() == 1).all()
    df = synthetic()
    split = dataset.selection_split(df, seed=0)
    assert (df.assign(side=split).groupby("specimen_group")["side"].nunique() == 1).all()
    assert abs((split == "select").mean() - 0.5) < 0.05
    assert not split.equals(dataset.selection_split(df, seed=1))
