"""Specimen groups and the folds every stage shares: one key, one hash, one assignment.

A DoITPoMS specimen is photographed several times; its records share a brief description,
but the site spells it inconsistently ("Medium carbon, low alloy steel" and "... steel.",
"750° C" and "750°C", mojibake of "ä"). `specimen_key` folds those spellings to one key:
unicode-decomposed, diacritics and every non-alphanumeric character (punctuation, symbols,
white space) dropped, case-folded.

Folds are balanced by class (`assign_folds`, issue 18 item 4): specimens are placed one by
one in a fixed order (technique class, largest first, seeded hash), each in the fold where its
technique and category classes hold the smaller share so far. The stability guarantee is
exact: adding or removing specimen S never moves a specimen placed before S (`order_of`); only
specimens after S may move. (No assignment can be both class-balanced and a function of each
specimen's key alone: with independent hashes a class of a few specimens falls on one side by
chance, as AFM did, 2 images against 19.) A subset of the records (the smoke profile's
sample) would get its own folds, so subsets keep the whole dataset's assignment: the `fold`
column `dataset.load_records` adds (`folds_of`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

import pandas as pd

N_FOLDS = 2  # cross-fitting: choose on one fold of specimens, score on the other, swap
FOLD_NAMES = ("select", "evaluate")  # fold 0 / fold 1, the names notebooks 03 and 05 show
STRATA = ("technique_family", "primary_category")  # the classes the folds balance


def specimen_key(brief_description: str) -> str:
    """Normalised brief description: the identity of a specimen ('' when there is none)."""
    text = unicodedata.normalize("NFKD", str(brief_description))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return re.sub(r"[\W_]+", "", text)


def specimen_groups(df: pd.DataFrame) -> pd.Series:
    """Each record's specimen key; a record without a description is a specimen of its own."""
    keys = df["brief_description"].map(specimen_key)
    alone = "record " + df["micrograph_no"].astype(str)
    return keys.where(keys != "", alone)


def _hash(key: str, seed: int) -> int:
    """sha256 of (seed, key), its first 8 bytes read big-endian (`int.from_bytes`' default
    since Python 3.11). Machine-independent."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8])


def _majority(df: pd.DataFrame, column: str) -> pd.Series:
    """Each specimen's class in `column`: the most common over its own images (ties: the
    first by name; "" when none is known), so it depends on no other specimen. Counted in one
    grouped pass: a Python function per specimen cost about 2 ms each, and every
    `load_records` places every specimen."""
    groups = pd.Index(sorted(df["specimen_group"].unique()), name="specimen_group")
    if column not in df:
        return pd.Series("", index=groups)
    values = df[column].astype(object).where(df[column].notna(), "").astype(str)
    known = pd.DataFrame({"group": df["specimen_group"], "value": values})[values != ""]
    counts = known.groupby(["group", "value"]).size().rename("n").reset_index()
    # most images first, then the first name: the top row of each specimen is its class
    top = counts.sort_values(["n", "value"], ascending=[False, True], kind="stable")
    top = top.drop_duplicates("group").set_index("group")["value"]
    return top.reindex(groups, fill_value="").rename(column)


def assign_folds(
    df: pd.DataFrame, *, n_folds: int = N_FOLDS, seed: int = 0, strata: Sequence[str] = STRATA
) -> pd.Series:
    """Fold (int) of every record of `df`, aligned with it, balanced by class in every column
    of `strata` (a specimen counts in its majority class of each).

    Specimens are taken in a fixed order: by their class of the first column (name), largest
    first (the big ones placed while there is room to even them out), then by seeded hash.
    Each goes to the fold where its classes hold the smallest share of the images placed so
    far (summed over the columns; a tie: its own hash fold). A specimen's fold therefore
    depends only on the specimens before it in that order: adding or removing specimen S
    never moves a specimen that comes before S (see `order_of`)."""
    ordered = order_of(df, seed=seed, strata=strata)
    classes = {c: _majority(df, c).to_dict() for c in strata}  # plain dicts: read per specimen
    placed: dict[tuple[str, str, int], int] = {}
    fold: dict[str, int] = {}
    for key, images, hashed in zip(ordered.index, ordered["images"], ordered["hash"], strict=True):
        own = [(c, classes[c][key]) for c in strata if classes[c][key] != ""]
        size = int(images)

        def share(f: int, own=own, size=size) -> float:
            total = 0.0
            for c, v in own:
                so_far = sum(placed.get((c, v, g), 0) for g in range(n_folds))
                total += placed.get((c, v, f), 0) / (so_far + size)
            return total

        costs = [share(f) for f in range(n_folds)]
        lightest = [f for f in range(n_folds) if costs[f] == min(costs)]
        own_fold = int(hashed) % n_folds
        chosen = own_fold if own_fold in lightest else lightest[0]
        fold[key] = chosen
        for c, v in own:
            placed[(c, v, chosen)] = placed.get((c, v, chosen), 0) + size
    return df["specimen_group"].map(fold).astype(int)


def order_of(df: pd.DataFrame, *, seed: int = 0, strata: Sequence[str] = STRATA) -> pd.DataFrame:
    """The order `assign_folds` places specimens in (index: specimen key; columns stratum,
    images, hash): a function of each specimen's own images and key only."""
    images = df.groupby("specimen_group").size()
    stratum = _majority(df, strata[0]).loc[images.index] if strata else ""
    table = pd.DataFrame(
        {"stratum": stratum, "images": images, "hash": [_hash(k, seed) for k in images.index]},
        index=images.index,
    )
    table["largest_first"] = -table["images"]
    return table.sort_values(["stratum", "largest_first", "hash"]).drop(columns="largest_first")


def folds_of(df: pd.DataFrame) -> pd.Series:
    """The folds of `df`'s records: the `fold` column `dataset.load_records` computed on the
    whole dataset (so a subset keeps the whole dataset's folds), or, for a table made some
    other way, `assign_folds` on the table itself."""
    return df["fold"].astype(int) if "fold" in df else assign_folds(df)


def fold_counts(df: pd.DataFrame, folds: pd.Series, column: str) -> pd.DataFrame:
    """Per class of `column`: specimens, images in each fold (by name) and the smaller fold's
    share of the class's images: the table that shows the folds are balanced."""
    frame = df.assign(fold=fold_names(folds).to_numpy())
    images = frame.groupby([column, "fold"]).size().unstack(fill_value=0)
    images = images.reindex(columns=list(FOLD_NAMES[: folds.nunique() or 1]), fill_value=0)
    table = images.add_prefix("images_")
    table.insert(0, "specimens", frame.groupby(column)["specimen_group"].nunique())
    table["smaller_fold_share"] = images.min(axis=1) / images.sum(axis=1)
    return table.reset_index()


def fold_names(folds: pd.Series) -> pd.Series:
    """Two folds shown by name: "select" (fold 0) and "evaluate" (fold 1)."""
    return folds.map(dict(enumerate(FOLD_NAMES)))
