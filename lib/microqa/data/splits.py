"""Specimen groups and the folds every stage shares: one key, one hash, one assignment.

A DoITPoMS specimen is photographed several times; its records share a brief description,
but the site spells it inconsistently ("Medium carbon, low alloy steel" and "... steel.",
"750° C" and "750°C", mojibake of "ä"). `specimen_key` folds those spellings to one key:
unicode-decomposed, diacritics and every non-alphanumeric character (punctuation, symbols,
white space) dropped, case-folded.

A group's fold is a seeded hash of its key (`fold_of`), not a position in a shuffled list:
adding or removing a specimen never moves another one, and every notebook, the CV folds and
the VLM's neighbour exclusion read the same assignment from `assign_folds`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pandas as pd

N_FOLDS = 2  # cross-fitting: choose on one fold of specimens, score on the other, swap
FOLD_NAMES = ("select", "evaluate")  # fold 0 / fold 1, the names notebooks 03 and 05 show


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


def fold_of(key: str, n_folds: int, seed: int) -> int:
    """Fold of one specimen key: sha256 of (seed, key), its first 8 bytes read big-endian
    (`int.from_bytes`' default since Python 3.11), modulo n_folds. Machine-independent."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8]) % n_folds


def assign_folds(df: pd.DataFrame, *, n_folds: int = N_FOLDS, seed: int = 0) -> pd.Series:
    """Fold (int) of every record of `df`, aligned with it, from its `specimen_group`."""
    return df["specimen_group"].map(lambda key: fold_of(key, n_folds, seed)).astype(int)


def fold_names(folds: pd.Series) -> pd.Series:
    """Two folds shown by name: "select" (fold 0) and "evaluate" (fold 1)."""
    return folds.map(dict(enumerate(FOLD_NAMES)))
