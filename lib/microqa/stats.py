"""Statistics a reviewer accepts: specimen-clustered bootstrap CIs, paired tests, Holm, power.

- **Resampling unit: the specimen.** Images of one specimen are near-duplicates, so resampling
  images would understate the spread. Specimens are resampled with replacement *within class
  strata* (a specimen's stratum is its rarest class), so every class that owns a specimen is
  present in every resample and balanced accuracy never silently drops a class.
- **Paired comparisons** resample the same specimens for both methods: the CI of the
  difference in balanced accuracy (first) and accuracy, a two-sided bootstrap p-value, and
  the exact two-sided McNemar test on per-image correctness. p-values are Holm-corrected over
  the family of pairs a table asks.
- **Minimal detectable difference** at 80% power and two-sided 5% level from the clustered
  bootstrap SE of the difference: (z_0.975 + z_0.80) · SE.

Metric formulas live in `metrics`; everything here is seeded and uses numpy's PCG64, so the
same inputs give the same numbers on any machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from microqa import metrics

LEVEL = 0.95
POWER = 0.80
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _strata(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Stratum of each image: the rarest class (fewest images overall) of its specimen."""
    counts = pd.Series(y).value_counts()
    frame = pd.DataFrame({"group": groups, "y": y, "count": counts.loc[y].to_numpy()})
    rarest = frame.sort_values(["count", "y"]).drop_duplicates("group").set_index("group")["y"]
    return rarest.loc[groups].to_numpy()


def resamples(
    y_true: Sequence, groups: Sequence | None = None, *, n_boot: int = 1000, seed: int = 0
) -> list[np.ndarray]:
    """Index arrays of `n_boot` bootstrap samples: specimens drawn with replacement within
    class strata, each bringing all its images. groups=None: every image its own specimen."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return []
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    strata = _strata(y, groups)
    members: list[list[np.ndarray]] = []
    for stratum in sorted(set(strata)):
        in_stratum = np.flatnonzero(strata == stratum)
        keys, inverse = np.unique(groups[in_stratum], return_inverse=True)
        members.append([in_stratum[inverse == k] for k in range(len(keys))])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        picked = [
            specimens[j]
            for specimens in members
            for j in rng.integers(0, len(specimens), len(specimens))
        ]
        out.append(np.concatenate(picked))
    return out


def interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval holding `level` of the values (nan when there are none)."""
    if len(values) == 0:
        return (np.nan, np.nan)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def _metric_functions(codes: metrics.LabelCodes) -> dict[str, Callable[[np.ndarray], float]]:
    return {name: getattr(codes, name) for name in CI_METRICS}


def summarise(
    y_true: Sequence,
    y_pred: Sequence,
    groups: Sequence | None = None,
    *,
    scores: np.ndarray | None = None,
    classes: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """One row: n, specimens, accuracy, balanced accuracy, macro P/R/F1, unanswered rate,
    Top-2, and specimen-clustered, class-stratified 95% CIs on accuracy, balanced accuracy
    and macro F1."""
    y_true = np.asarray(y_true)
    y_pred = metrics.clean_predictions(y_pred)
    n = len(y_true)
    p, r, f = metrics.macro_prf(y_true, y_pred) if n else (np.nan,) * 3
    row: dict[str, float | int] = {
        "n": n,
        "n_specimens": n if groups is None else int(pd.Series(groups).nunique()),
        "accuracy": metrics.accuracy(y_true, y_pred) if n else np.nan,
        "balanced_accuracy": metrics.balanced_accuracy(y_true, y_pred) if n else np.nan,
        "macro_precision": p,
        "macro_recall": r,
        "macro_f1": f,
        "unanswered_rate": float(np.mean(y_pred == metrics.NO_ANSWER)) if n else np.nan,
    }
    if scores is not None and classes is not None and n:
        row["top2_accuracy"] = metrics.top_k_accuracy(y_true, scores, classes, 2)
    samples = resamples(y_true, groups, n_boot=n_boot, seed=seed)
    functions = _metric_functions(metrics.LabelCodes(y_true, y_pred))
    for name in CI_METRICS:
        values = [functions[name](i) for i in samples]
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(values)
    row["ci_level"] = LEVEL
    return row


def mdd(standard_error: float, *, power: float = POWER, level: float = LEVEL) -> float:
    """Smallest true difference a two-sided test at `level` detects with `power`."""
    return float((norm.ppf(1 - (1 - level) / 2) + norm.ppf(power)) * standard_error)


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a zero difference: twice the smaller tail at 0."""
    d = np.asarray(differences)
    if len(d) == 0:
        return np.nan
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def paired_comparison(
    y_true: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    groups: Sequence | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Method a minus method b on the same images: balanced-accuracy and accuracy differences
    with paired clustered-bootstrap 95% CIs, bootstrap p (balanced accuracy), its SE and the
    minimal detectable difference at 80% power, and the exact two-sided McNemar test."""
    y = np.asarray(y_true)
    a, b = metrics.clean_predictions(pred_a), metrics.clean_predictions(pred_b)
    codes_a, codes_b = metrics.LabelCodes(y, a), metrics.LabelCodes(y, b)
    samples = resamples(y, groups, n_boot=n_boot, seed=seed)
    row: dict[str, float | int] = {"n": len(y)}
    row["n_specimens"] = len(y) if groups is None else int(pd.Series(groups).nunique())
    for name in ("balanced_accuracy", "accuracy"):
        fa, fb = getattr(codes_a, name), getattr(codes_b, name)
        boot = np.array([fa(i) - fb(i) for i in samples])
        whole = np.arange(len(y))
        row[f"{name}_difference"] = fa(whole) - fb(whole) if len(y) else np.nan
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(boot)
        if name == "balanced_accuracy":
            se = float(np.std(boot, ddof=1)) if len(boot) > 1 else np.nan
            row["balanced_accuracy_se"] = se
            row["p_bootstrap"] = bootstrap_p(boot)
            row["mdd_80"] = mdd(se)
    row.update(metrics.mcnemar(a == y, b == y))
    row["p_mcnemar"] = row.pop("p_value")
    row["ci_level"] = LEVEL
    return row


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; nan kept)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite])]  # tied p-values get the same adjusted value
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def with_holm(table: pd.DataFrame, columns: Sequence[str] = ("p_bootstrap", "p_mcnemar")):
    """The table with `<column>_holm` for each p-value column, over all its rows."""
    out = table.copy()
    for column in columns:
        if column in out:
            out[f"{column}_holm"] = holm(out[column].to_numpy())
    return out
