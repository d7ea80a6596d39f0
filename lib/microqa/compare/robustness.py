"""Robustness and shortcut controls: how answers move when the pixels change but the label does not.

Input is one tidy table of per-image predictions, one row per (method, task, variant, image):
columns ``method``, ``task``, ``variant`` (a name from `data.variants`), ``micrograph_no``,
``y_true``, ``y_pred`` (None/NaN: no answer) and the cluster column named by the caller
(the specimen key). Every comparison is paired on the same images and its interval resamples
the clusters within class strata (`stats.paired_comparison`); the cluster is a required argument.

- `robustness_table`: for each label-preserving transform, the change in balanced accuracy
  (variant − original, clustered CI) and the consistency rate (share of images whose answer does
  not change, clustered CI). Grayscale is its own group ("colour"), apart from the geometric
  transforms, because colour can itself be a shortcut; masking is the "annotation" group.
- `visual_gain`: original − blank per method and task, the no-image baseline's comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from microqa import stats
from microqa.data import variants

GROUPS = {"hflip": "geometric", "rot90": "geometric", "gray": "colour", "masked": "annotation"}
KEY = ("method", "task")


def _paired(predictions: pd.DataFrame, variant: str, cluster: str) -> pd.DataFrame:
    """Original and `variant` answers side by side on the images both have (one method, task)."""
    original = predictions[predictions["variant"] == variants.ORIGINAL]
    other = predictions[predictions["variant"] == variant]
    for name, part in ((variants.ORIGINAL, original), (variant, other)):
        if part["micrograph_no"].duplicated().any():
            raise ValueError(f"variant {name!r} answers an image twice")
    joined = original.merge(
        other[["micrograph_no", "y_pred"]], on="micrograph_no", suffixes=("_original", "_variant")
    )
    if joined.empty:
        raise ValueError(f"no image has answers on both the original and variant {variant!r}")
    if joined[cluster].isna().any():
        raise ValueError(f"cluster column {cluster!r} has missing values")
    return joined


def _answers(values: pd.Series) -> np.ndarray:
    """Predictions as objects with every kind of missing answer as None (so equal means same)."""
    return np.array([None if pd.isna(v) else v for v in values], dtype=object)


def consistency(
    y_true, pred_a, pred_b, groups, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Share of images answered the same way (two non-answers agree) and its clustered CI."""
    same = _answers(pd.Series(pred_a)) == _answers(pd.Series(pred_b))
    samples = stats.resamples(np.asarray(y_true), np.asarray(groups), n_boot=n_boot, seed=seed)
    low, high = stats.interval([float(same[index].mean()) for index in samples])
    return {
        "consistency": float(same.mean()),
        "consistency_ci_low": low,
        "consistency_ci_high": high,
    }


def _compare(joined: pd.DataFrame, a: str, b: str, cluster: str, n_boot: int, seed: int) -> dict:
    y = joined["y_true"].to_numpy(dtype=object)
    pred_a, pred_b = _answers(joined[a]), _answers(joined[b])
    row = stats.paired_comparison(
        y, pred_a, pred_b, joined[cluster].to_numpy(), n_boot=n_boot, seed=seed
    )
    return row


def robustness_table(
    predictions: pd.DataFrame, *, cluster: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """One row per method, task and transform present: Δ balanced accuracy and consistency."""
    rows = []
    for (method, task), part in predictions.groupby(list(KEY), sort=True):
        for variant in variants.ROBUSTNESS_VARIANTS:
            if not (part["variant"] == variant).any():
                continue
            joined = _paired(part, variant, cluster)
            row = {"method": method, "task": task, "variant": variant, "group": GROUPS[variant]}
            row.update(_compare(joined, "y_pred_variant", "y_pred_original", cluster, n_boot, seed))
            y = joined["y_true"].to_numpy(dtype=object)
            row.update(
                consistency(
                    y,
                    joined["y_pred_original"],
                    joined["y_pred_variant"],
                    joined[cluster].to_numpy(),
                    n_boot=n_boot,
                    seed=seed,
                )
            )
            rows.append(row)
    return pd.DataFrame(rows)


def visual_gain(
    predictions: pd.DataFrame, *, cluster: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Original − blank (the no-image baseline) per method and task, paired and clustered."""
    rows = []
    for (method, task), part in predictions.groupby(list(KEY), sort=True):
        if not (part["variant"] == variants.BLANK).any():
            continue
        joined = _paired(part, variants.BLANK, cluster)
        row = {"method": method, "task": task, "comparison": "visual gain (original - blank)"}
        row.update(_compare(joined, "y_pred_original", "y_pred_variant", cluster, n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)
