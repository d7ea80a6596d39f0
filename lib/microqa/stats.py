"""Statistics a reviewer accepts: clustered bootstrap CIs, a clustered paired test, Holm, power.

- **Resampling unit: the cluster a result is grouped by** (specimens; contributors for
  contributor-grouped results). Images of one specimen are near-duplicates, so resampling
  images would understate the spread. The cluster is a REQUIRED argument of every interval
  function: there is no image-level default to fall into by forgetting it. Clusters are
  resampled with replacement *within class strata* (a cluster's stratum is its rarest class),
  so every class that owns a cluster is present in every resample and balanced accuracy never
  silently drops a class.
- **Paired comparisons** resample the same clusters for both methods: the CI of the
  difference in balanced accuracy (first) and accuracy. The p-value tests the quantity the
  interval shows, Δ balanced accuracy, with the cluster sign-flip permutation test of
  `sign_flip_p` (see there for why this test); the exact McNemar test on per-image
  correctness stays beside it, named as a test of *accuracy* on images taken as independent.
  A pair whose two methods predict the same on every image is no test: it is marked
  identical and gets no p-value.
- **Families**: `with_family` Holm-corrects one family of pairs and gives each its minimal
  detectable difference at the corrected level of Holm's first step (α/m): the largest
  difference the family can miss.
- **Minimal detectable difference** at 80% power from the clustered bootstrap SE of the
  difference: (z_{1-α/2} + z_0.80) · SE.

Metric formulas live in `metrics`; everything here is seeded and uses numpy's PCG64, so the
same inputs give the same numbers on any machine.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from microqa import metrics

LEVEL = 0.95
ALPHA = 1 - LEVEL  # two-sided level of every test, before a family's correction
POWER = 0.80
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
N_PERMUTATIONS = 20_000  # smallest Monte Carlo p 1/20001: below α/m for families up to 1000
EXACT_UP_TO = 16  # up to 2^16 sign patterns are enumerated: an exact p-value


def _clusters(y: np.ndarray, groups: Sequence | None) -> np.ndarray:
    """The cluster of each image, checked: one per image, never left out."""
    if groups is None:
        raise ValueError(
            "groups is required: pass the cluster each image belongs to (specimen ids; "
            "contributors for contributor-grouped results)"
        )
    groups = np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} images")
    return groups


def _strata(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Stratum of each image: the rarest class (fewest images overall) of its cluster."""
    counts = pd.Series(y).value_counts()
    frame = pd.DataFrame({"group": groups, "y": y, "count": counts.loc[y].to_numpy()})
    rarest = frame.sort_values(["count", "y"]).drop_duplicates("group").set_index("group")["y"]
    return rarest.loc[groups].to_numpy()


# The samples of the last few (labels, clusters, n_boot, seed): notebook 05 asks for the same
# samples of a task hundreds of times (every method, every metric), and drawing them is most of
# its bootstrap cost. Read-only arrays, so one caller cannot change another's samples.
_DRAWN: OrderedDict[str, list[np.ndarray]] = OrderedDict()
_DRAWN_KEPT = 16


def resamples(
    y_true: Sequence, groups: Sequence, *, n_boot: int, seed: int = 0
) -> list[np.ndarray]:
    """Index arrays of `n_boot` bootstrap samples: clusters (`groups`, one per image) drawn
    with replacement within class strata, each bringing all its images."""
    y = np.asarray(y_true)
    groups = _clusters(y, groups)
    key = hashlib.sha256(
        "\x1e".join(
            ["\x1f".join(map(repr, y)), "\x1f".join(map(repr, groups)), f"{n_boot}/{seed}"]
        ).encode()
    ).hexdigest()
    if key not in _DRAWN:
        _DRAWN[key] = _draw(y, groups, n_boot=n_boot, seed=seed)
        while len(_DRAWN) > _DRAWN_KEPT:
            _DRAWN.popitem(last=False)
    _DRAWN.move_to_end(key)
    return list(_DRAWN[key])


def _draw(y: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int) -> list[np.ndarray]:
    if len(y) == 0 or n_boot == 0:
        return []
    strata = _strata(y, groups)
    # Every cluster's images laid end to end, stratum by stratum; each stratum's clusters are
    # numbered from its offset. Draws are made stratum by stratum, sample by sample (so a seed
    # always gives the same samples); the images are gathered once for all samples at the end.
    images, sizes, offsets = [], [], []
    for stratum in sorted(set(strata)):
        in_stratum = np.flatnonzero(strata == stratum)
        keys, inverse = np.unique(groups[in_stratum], return_inverse=True)
        offsets.append(sum(len(s) for s in sizes))
        images.append(in_stratum[np.argsort(inverse, kind="stable")])
        sizes.append(np.bincount(inverse, minlength=len(keys)))
    images, counts = np.concatenate(images), [len(s) for s in sizes]
    sizes = np.concatenate(sizes)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    drawn = np.concatenate(
        [
            rng.integers(0, count, count) + offset
            for _ in range(n_boot)
            for count, offset in zip(counts, offsets, strict=True)
        ]
    )
    lengths = sizes[drawn]
    # the drawn clusters' images in draw order: a ragged gather, no loop over clusters
    shift = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
    picked = images[shift + np.arange(lengths.sum())]
    picked.setflags(write=False)
    per_sample = lengths.reshape(n_boot, len(sizes)).sum(axis=1)
    return np.split(picked, np.cumsum(per_sample)[:-1])


def interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval holding `level` of the values (nan when there are none)."""
    if len(values) == 0:
        return (np.nan, np.nan)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def _weights(y: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """`resamples(...)` as a (n_boot, images) matrix of multiplicities (`metrics.LabelCodes.
    on_samples` scores every sample at once from it)."""
    return metrics.sample_weights(resamples(y, groups, n_boot=n_boot, seed=seed), len(y))


def summarise(
    y_true: Sequence,
    y_pred: Sequence,
    groups: Sequence,
    *,
    scores: np.ndarray | None = None,
    classes: Sequence | None = None,
    n_boot: int,
    seed: int = 0,
) -> dict[str, float | int]:
    """One row: n, clusters, accuracy, balanced accuracy, macro P/R/F1, unanswered rate,
    Top-2, and cluster-resampled, class-stratified 95% CIs on accuracy, balanced accuracy
    and macro F1. `groups`: each image's cluster (required)."""
    y_true = np.asarray(y_true)
    groups = _clusters(y_true, groups)
    y_pred = metrics.clean_predictions(y_pred)
    n = len(y_true)
    p, r, f = metrics.macro_prf(y_true, y_pred) if n else (np.nan,) * 3
    row: dict[str, float | int] = {
        "n": n,
        "n_specimens": int(pd.Series(groups).nunique()),
        "accuracy": metrics.accuracy(y_true, y_pred) if n else np.nan,
        "balanced_accuracy": metrics.balanced_accuracy(y_true, y_pred) if n else np.nan,
        "macro_precision": p,
        "macro_recall": r,
        "macro_f1": f,
        "unanswered_rate": float(np.mean(y_pred == metrics.NO_ANSWER)) if n else np.nan,
    }
    if scores is not None and classes is not None and n:
        row["top2_accuracy"] = metrics.top_k_accuracy(y_true, scores, classes, 2)
    weights = _weights(y_true, groups, n_boot=n_boot, seed=seed)
    codes = metrics.LabelCodes(y_true, y_pred)
    for name in CI_METRICS:
        values = codes.on_samples(name, weights)
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(values)
    row["ci_level"] = LEVEL
    return row


def summarise_repeats(
    y_true: Sequence,
    repeats: Sequence[Sequence],
    groups: Sequence,
    *,
    scores: Sequence[np.ndarray] | None = None,
    classes: Sequence | None = None,
    n_boot: int,
    seed: int = 0,
) -> dict[str, float | int]:
    """One number, one source, for a result repeated over CV fold seeds: each CI metric's mean
    over the repeats, its sd across them, and the 95% CI *of that mean* (each cluster
    resample scores every repeat and averages them), so the interval belongs to the number
    shown. Top-2: mean over repeats. `groups`: each image's cluster (required)."""
    y = np.asarray(y_true)
    groups = _clusters(y, groups)
    codes = [metrics.LabelCodes(y, metrics.clean_predictions(p)) for p in repeats]
    weights = _weights(y, groups, n_boot=n_boot, seed=seed)
    whole = np.arange(len(y))
    row: dict[str, float | int] = {
        "n": len(y),
        "n_clusters": int(pd.Series(groups).nunique()),
        "repeats": len(codes),
    }
    for name in CI_METRICS:
        values = [getattr(c, name)(whole) for c in codes]
        row[name] = float(np.mean(values))
        row[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        boot = np.mean([c.on_samples(name, weights) for c in codes], axis=0)
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(boot)
    if scores is not None and classes is not None:
        row["top2_accuracy"] = float(
            np.mean([metrics.top_k_accuracy(y, s, classes, 2) for s in scores])
        )
    row["ci_level"] = LEVEL
    return row


def mdd(standard_error: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference a two-sided test at level `alpha` detects with `power`."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * standard_error)


def sign_flip_p(
    y_true: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    groups: Sequence,
    *,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> tuple[float, int]:
    """Two-sided cluster sign-flip permutation p-value of Δ balanced accuracy (a minus b), and
    the number of sign patterns it used.

    Null hypothesis: within every cluster the two methods are exchangeable, so swapping a
    and b's predictions on all images of a cluster (a sign flip of the cluster's share of Δ)
    leaves the distribution of Δ unchanged. Why this test: it tests exactly the quantity the
    interval shows (Δ balanced accuracy, not accuracy), it keeps clusters whole (images of
    one specimen are never treated as independent), it is exact in finite samples (no
    normal approximation, no bootstrap-under-the-alternative shift), and its resolution is
    ours to set: with B random patterns its smallest p is 1/(B + 1), so B ≥ 20·m/α reaches a
    family of m pairs' corrected level, where a 1,000-resample bootstrap p could not.

    Balanced accuracy is a weighted sum of per-image correctness: each image of class c
    weighs 1/(K·n_c) (K classes present, n_c their images; the truth never moves), so
    Δ = Σ_g d_g over clusters g and a flip pattern s gives Σ_g s_g·d_g: one matrix product.
    Up to 2^EXACT_UP_TO patterns are enumerated (exact p: share with |Δ*| ≥ |Δ|); beyond,
    B random patterns and p = (1 + #{|Δ*| ≥ |Δ|}) / (1 + B)."""
    y = np.asarray(y_true)
    groups = _clusters(y, groups)
    if len(y) == 0:
        return np.nan, 0
    a, b = metrics.clean_predictions(pred_a), metrics.clean_predictions(pred_b)
    codes = metrics.LabelCodes(y, a)
    support = np.bincount(codes.t, minlength=codes.k)
    weight = 1.0 / (np.count_nonzero(support) * support[codes.t])
    per_image = weight * ((a == y).astype(float) - (b == y).astype(float))
    _, cluster = np.unique(groups, return_inverse=True)
    share = np.bincount(cluster, weights=per_image)  # d_g
    observed = abs(share.sum())
    tolerance = 1e-12  # the same Δ summed in another order must count as "at least as large"
    k = len(share)
    if k <= EXACT_UP_TO and 2**k <= max(n_permutations, 2):
        patterns = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
        deltas = np.abs((1 - 2 * patterns) @ share)
        return float(np.mean(deltas >= observed - tolerance)), int(2**k)
    rng = np.random.default_rng(seed)
    extreme, done = 0, 0
    while done < n_permutations:  # in chunks: B x clusters signs never held at once
        size = min(5000, n_permutations - done)
        signs = 1 - 2 * rng.integers(0, 2, (size, k), dtype=np.int8)
        extreme += int(np.sum(np.abs(signs @ share) >= observed - tolerance))
        done += size
    return float((1 + extreme) / (1 + n_permutations)), int(n_permutations)


def paired_comparison(
    y_true: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    groups: Sequence,
    *,
    n_boot: int,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, float | int | bool]:
    """Method a minus method b on the same images, clustered by `groups` (required):
    balanced-accuracy and accuracy differences with paired cluster-bootstrap 95% CIs, the
    cluster sign-flip p of Δ balanced accuracy, its SE and the minimal detectable difference
    at 80% power (uncorrected; `with_family` adds the corrected one), and the exact McNemar
    test of accuracy. Identical predictions on every image: `identical`, no p-values."""
    y = np.asarray(y_true)
    groups = _clusters(y, groups)
    a, b = metrics.clean_predictions(pred_a), metrics.clean_predictions(pred_b)
    codes_a, codes_b = metrics.LabelCodes(y, a), metrics.LabelCodes(y, b)
    weights = _weights(y, groups, n_boot=n_boot, seed=seed)
    identical = bool(len(y) and np.array_equal(a, b))
    row: dict[str, float | int | bool] = {"n": len(y)}
    row["n_specimens"] = int(pd.Series(groups).nunique())
    row["identical"] = identical
    for name in ("balanced_accuracy", "accuracy"):
        fa, fb = getattr(codes_a, name), getattr(codes_b, name)
        boot = codes_a.on_samples(name, weights) - codes_b.on_samples(name, weights)
        whole = np.arange(len(y))
        row[f"{name}_difference"] = fa(whole) - fb(whole) if len(y) else np.nan
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(boot)
        if name == "balanced_accuracy":
            se = float(np.std(boot, ddof=1)) if len(boot) > 1 else np.nan
            row["balanced_accuracy_se"] = se
            p, used = (
                (np.nan, 0)
                if identical
                else sign_flip_p(y, a, b, groups, n_permutations=n_permutations, seed=seed)
            )
            row["p_sign_flip"] = p
            row["n_sign_patterns"] = used
            row["mdd_80"] = mdd(se)
    mcnemar = metrics.mcnemar(a == y, b == y)
    row["only_a_correct"] = mcnemar["only_a_correct"]
    row["only_b_correct"] = mcnemar["only_b_correct"]
    row["p_mcnemar_accuracy"] = np.nan if identical else mcnemar["p_value"]
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


def family_size(p_values: Sequence[float]) -> int:
    """m of a family: its pairs that are tests (identical pairs carry no p-value)."""
    return int(np.sum(~np.isnan(np.asarray(p_values, dtype=float))))


def with_family(
    table: pd.DataFrame,
    *,
    p_column: str = "p_sign_flip",
    also: Sequence[str] = ("p_mcnemar_accuracy",),
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """One family of pairs, corrected within itself: `<column>_holm` for the test of the
    quantity shown and for each column of `also`, the family size m, and the minimal
    detectable difference at Holm's first-step level α/m (`mdd_80_corrected`)."""
    out = table.copy()
    if out.empty:
        return out
    m = family_size(out[p_column])
    out["family_size"] = m
    for column in (p_column, *also):
        if column in out:
            out[f"{column}_holm"] = holm(out[column].to_numpy())
    corrected = alpha / max(m, 1)
    out["mdd_80_corrected"] = [
        np.nan if np.isnan(p) else mdd(se, alpha=corrected)
        for p, se in zip(out[p_column].astype(float), out["balanced_accuracy_se"], strict=True)
    ]
    return out


def permutations_for(m: int, alpha: float = ALPHA, margin: int = 20) -> int:
    """Random sign patterns a family of m tests needs: the smallest p, 1/(B + 1), sits
    `margin` times below Holm's first-step level α/m."""
    return int(np.ceil(margin * max(m, 1) / alpha))
