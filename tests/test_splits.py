"""Specimen keys and folds: one key, class-balanced folds as stable as balance allows, shared
by all stages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from microqa import config
from microqa.data import dataset, splits
from tests.conftest import REPO, SHARED, needs_mirror


def _records(descriptions):
    df = pd.DataFrame(
        {"micrograph_no": range(1, len(descriptions) + 1), "brief_description": descriptions}
    )
    return df.assign(specimen_group=splits.specimen_groups(df))


@pytest.mark.parametrize(
    "a, b",
    [
        ("Medium carbon, low alloy steel", "medium carbon, low alloy steel."),
        ("Glass ceramic, heat treated at 750° C", "glass ceramic, heat treated at 750°C"),
        ("Ti, Al 6, V 4 (wt%), Widmanstätten", "Ti, Al 6, V 4 (wt%), WidmanstÃ¤tten"),
        ("silver production\xa0from ores", "silverproduction from ores"),
        ("Cu - 5% Sn", "CU-5%SN"),
    ],
)
def test_spellings_of_one_specimen_share_a_key(a, b):
    assert splits.specimen_key(a) == splits.specimen_key(b) != ""


def test_different_specimens_keep_different_keys():
    assert splits.specimen_key("Al 75, Cu 25") != splits.specimen_key("Al 75, Cu 26")
    assert splits.specimen_key("Fe-C") != splits.specimen_key("Fe-Co")


def test_records_without_a_description_are_specimens_of_their_own():
    df = _records(["", "  ", "steel", "Steel.", "Record 1"])
    # named after the record, readable where a group is shown; the space keeps the name apart
    # from every specimen key (keys have no white space): "Record 1" is the key "record1"
    assert list(df["specimen_group"]) == ["record 1", "record 2", "steel", "steel", "record1"]


def test_folds_keep_specimens_whole_and_depend_on_the_seed():
    df = _records([f"specimen {i // 2}" for i in range(2000)])
    folds = splits.assign_folds(df, seed=0)
    assert folds.dtype == "int64" and folds.index.equals(df.index)
    assert (df.assign(f=folds).groupby("specimen_group")["f"].nunique() == 1).all()
    assert 0.45 < folds.mean() < 0.55  # no class known: each specimen by its own hash
    assert not folds.equals(splits.assign_folds(df, seed=1))


def test_a_subset_keeps_the_whole_datasets_folds():
    df = _records([f"specimen {i // 2}" for i in range(60)])
    df["fold"] = splits.assign_folds(df)
    part = df.iloc[::7]
    assert splits.folds_of(part).equals(df["fold"].iloc[::7])
    assert splits.folds_of(part.drop(columns="fold")).equals(splits.assign_folds(part))


def test_selection_split_names_the_folds():
    df = _records([f"specimen {i}" for i in range(50)])
    named = dataset.selection_split(df, seed=0)
    assert set(named) == {"select", "evaluate"}
    assert (named == "evaluate").equals(splits.assign_folds(df, seed=0) == 1)


@needs_mirror()
def test_punctuation_no_longer_splits_the_nine_mirror_specimens():
    """9 specimens (44 images) of the mirror were split into two groups by punctuation alone."""
    raw = pd.read_csv(SHARED / "doitpoms" / "records.csv", dtype=str, keep_default_na=False)
    old = raw["brief_description"].map(lambda s: " ".join(str(s).split()).lower())
    new = raw["brief_description"].map(splits.specimen_key)
    split_before = old.groupby(new).nunique()
    assert (split_before > 1).sum() == 9
    assert new.isin(split_before[split_before > 1].index).sum() == 44
    df = dataset.load_records(SHARED / "doitpoms")
    assert df.groupby("specimen_group")["brief_description"].nunique().max() >= 2  # merged
    assert df.groupby("specimen_group")["specimen_id"].nunique().eq(1).all()


def _sample_or_mirror():
    mirror = SHARED / "doitpoms"
    found = mirror if (mirror / "records.csv").is_file() else REPO / "data" / "sample"
    return dataset.load_records(found)


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_every_profile_subset_reads_the_same_assignment(profile):
    """Notebook 03 splits the profile's subset, 04 samples questions, 05 the whole dataset:
    a record's fold is the same in all three."""
    df = _sample_or_mirror()
    whole = dataset.selection_split(df, seed=0).set_axis(df["micrograph_no"])
    subset = dataset.limit_for_profile(df, config.profile(profile), seed=0)
    part = dataset.selection_split(subset, seed=0).set_axis(subset["micrograph_no"])
    assert part.equals(whole.loc[part.index])


@pytest.mark.parametrize("notebook", ["03_clip_zero_shot", "04_vlm_qa", "05_comparison"])
def test_notebooks_take_folds_only_from_the_one_function(notebook):
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for own_split in ("permutation(", "GroupKFold", "train_test_split", "specimen_key("):
        assert own_split not in code


def _classed(n_specimens=60, seed=0):
    """Specimens of 1-4 images, in 3 technique and 2 category classes, one rare class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_specimens):
        technique = "AFM" if s % 10 == 0 else ("SEM" if s % 3 else "Optical")
        for _ in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "brief_description": f"specimen {s}",
                    "technique_family": technique,
                    "primary_category": "Metal" if s % 4 else "Ceramic",
                }
            )
    df = pd.DataFrame(rows)
    df["micrograph_no"] = range(1, len(df) + 1)
    return df.assign(specimen_group=splits.specimen_groups(df))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_folds_split_every_class_about_evenly(seed):
    df = _classed(seed=seed)
    folds = splits.assign_folds(df, seed=seed)
    assert (df.assign(f=folds).groupby("specimen_group")["f"].nunique() == 1).all()
    for column in ("technique_family", "primary_category"):
        counts = splits.fold_counts(df, folds, column)
        assert (counts["smaller_fold_share"] >= 0.4).all(), counts
        assert counts["images_select"].sum() + counts["images_evaluate"].sum() == len(df)
    # a plain hash of each key would not: the rare class (6 specimens) is lopsided for a seed
    plain = [
        splits.fold_counts(_classed(seed=s),
                           _classed(seed=s)["specimen_group"].map(
                               lambda k, s=s: splits._hash(k, s) % 2),
                           "technique_family")["smaller_fold_share"].min()
        for s in range(3)
    ]  # fmt: skip
    assert min(plain) < 0.4


@pytest.mark.parametrize("removed", [0, 7, 30, 59])
def test_balanced_folds_never_move_a_specimen_placed_before_the_one_removed_or_added(removed):
    df = _classed()
    before = splits.assign_folds(df).set_axis(df["micrograph_no"])
    order = list(splits.order_of(df).index)
    key = splits.specimen_key(f"specimen {removed}")
    earlier = set(order[: order.index(key)])
    gone = df["specimen_group"] == key
    after = splits.assign_folds(df[~gone]).set_axis(df.loc[~gone, "micrograph_no"])
    kept = df.loc[~gone].set_index("micrograph_no")["specimen_group"]
    moved = set(kept[after != before.loc[after.index]])
    assert not moved & earlier  # only specimens after the removed one may move
    # adding it back restores every fold (the assignment is a function of the set)
    assert splits.assign_folds(df).equals(before.set_axis(df.index))


def test_balanced_folds_are_balanced_on_the_real_mirror():
    mirror = SHARED / "doitpoms"
    if not (mirror / "records.csv").is_file():
        pytest.skip("no local mirror")
    df = dataset.load_records(mirror)
    folds = splits.assign_folds(df)
    for column in ("technique_family", "primary_category", "technique_coarse"):
        counts = splits.fold_counts(df, folds, column)
        enough = counts[counts["specimens"] >= 4]
        assert (enough["smaller_fold_share"] >= 0.4).all(), counts


def test_fold_counts_hand_worked():
    df = _records(["a", "a", "b", "c", "c", "c"]).assign(technique_family=list("XXXYYY"))
    folds = pd.Series([0, 0, 1, 1, 1, 1])
    counts = splits.fold_counts(df, folds, "technique_family").set_index("technique_family")
    assert counts.loc["X"].tolist() == [2, 2, 1, pytest.approx(1 / 3)]
    assert counts.loc["Y"].tolist() == [1, 0, 3, 0.0]
