"""Formulas for judging probabilities and confidence orderings: calibration and selective risk.

Inputs are arrays: `probs` (n x k, rows summing to 1), `y` (n integer class indices), or a
per-image `confidence` with `correct` (bool). Intervals and the study's tables live in
`compare.calibration` / `compare.selective`; here only the formulas, each checked by hand.

- **ECE with equal-mass bins**: images sorted by confidence are cut at the confidence
  quantiles into `n_bins` bins (scikit-learn's `calibration_curve(strategy="quantile")` edges,
  so tied confidences always share a bin); ECE = sum over bins of (bin share) x |accuracy -
  mean confidence|. Equal-width bins leave most bins empty when a model is confident, which
  hides miscalibration where the images are.
- **Brier score (multi-class)**: mean over images of sum over classes of (p - onehot)^2, in
  [0, 2]; with two classes it is twice scikit-learn's binary `brier_score_loss`.
- **NLL**: mean of -log p(true class), with p clipped at `EPS` so a confident zero is a large
  finite penalty rather than infinity.
- **Temperature scaling** (Guo et al. 2017): softmax(log p / T); T > 1 softens, T < 1
  sharpens; argmax never changes. T is fitted by minimising NLL (bounded, on log T).
- **Risk-coverage**: images ordered by confidence, most confident first; at coverage k/n the
  risk is the error rate of the k kept. Tied confidences form one block, inside which the
  order is random: risk there is its expectation, so a method gains nothing from ties.
  AURC = mean risk over k = 1..n. The oracle keeps every correct image first; a random order
  has expected risk equal to the overall error at every coverage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

EPS = 1e-12
N_BINS = 10
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # T from 0.05 to 20: far outside any fit seen


def top_label(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct): the top probability and whether its class is the true one."""
    probs = np.asarray(probs, dtype=float)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)


def equal_mass_edges(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """`np.percentile(confidence, np.linspace(0, 100, n_bins + 1))`, computed as numpy's
    default ("linear") method does, on a sorted copy: the same floats (tested against
    np.percentile) without its generic machinery, which cost most of each bootstrap resample's
    ECE (about 0.4 ms of 0.5)."""
    ordered = np.sort(np.asarray(confidence, dtype=float))
    if len(ordered) == 0 or np.isnan(ordered[-1]):  # numpy's own rules for these
        return np.percentile(ordered, np.linspace(0, 100, n_bins + 1))
    quantiles = np.true_divide(np.linspace(0, 100, n_bins + 1), 100)
    virtual = (len(ordered) - 1) * quantiles  # numpy: the virtual index of each quantile
    below = np.floor(virtual)
    above = below + 1
    top = virtual >= len(ordered) - 1  # numpy takes the last value there
    below[top] = above[top] = -1
    below, above = below.astype(np.intp), above.astype(np.intp)
    gamma = virtual - below
    low, high = ordered[below], ordered[above]
    step = high - low
    # numpy's _lerp: from the nearer end, so that gamma 1 gives `high` exactly
    return np.where(gamma >= 0.5, high - step * (1 - gamma), low + step * gamma)


def equal_mass_bins(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin index (0..n_bins-1) of each confidence, cut at its quantiles (sklearn's edges)."""
    confidence = np.asarray(confidence, dtype=float)
    return np.searchsorted(equal_mass_edges(confidence, n_bins)[1:-1], confidence)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> pd.DataFrame:
    """One row per non-empty equal-mass bin: n, mean confidence, accuracy, lowest and highest
    confidence in it."""
    frame = pd.DataFrame(
        {
            "bin": equal_mass_bins(confidence, n_bins),
            "confidence": np.asarray(confidence, dtype=float),
            "correct": np.asarray(correct, dtype=float),
        }
    )
    grouped = frame.groupby("bin")
    return pd.DataFrame(
        {
            "n": grouped.size(),
            "confidence": grouped["confidence"].mean(),
            "accuracy": grouped["correct"].mean(),
            "confidence_low": grouped["confidence"].min(),
            "confidence_high": grouped["confidence"].max(),
        }
    ).reset_index()


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error over equal-mass bins (module doc): sum over bins of
    |correct - confidence| summed in the bin, over n (= share x |accuracy - confidence|)."""
    confidence = np.asarray(confidence, dtype=float)
    if len(confidence) == 0:
        return np.nan
    bins = equal_mass_bins(confidence, n_bins)
    right = np.bincount(bins, weights=np.asarray(correct, dtype=float), minlength=n_bins)
    said = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.sum(np.abs(right - said)) / len(confidence))


def brier_terms(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each image's term of the Brier score: sum_k (p_k - [y = k])^2."""
    probs = np.asarray(probs, dtype=float)
    onehot = np.eye(probs.shape[1])[np.asarray(y)]
    return np.sum((probs - onehot) ** 2, axis=1)


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: the mean of `brier_terms`."""
    return float(np.mean(brier_terms(probs, y)))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true class (clipped at EPS)."""
    probs = np.asarray(probs, dtype=float)
    true = probs[np.arange(len(probs)), np.asarray(y)]
    return float(-np.mean(np.log(np.clip(true, EPS, 1.0))))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities softmax(log p / T) (p clipped at EPS)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising NLL of `probs` on labels `y` (the fitting fold's only)."""
    result = minimize_scalar(
        lambda log_t: nll(scale(probs, np.exp(log_t)), y),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


# --- selective prediction ----------------------------------------------------------------------


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """coverage k/n and expected risk of the k most confident, k = 1..n (ties: module doc)."""
    risk = _risks(confidence, correct)
    return pd.DataFrame({"coverage": np.arange(1, len(risk) + 1) / len(risk), "risk": risk})


def _risks(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """The expected risk of the k most confident, k = 1..n (`risk_coverage`'s risk column)."""
    confidence = np.asarray(confidence, dtype=float)
    wrong = ~np.asarray(correct, dtype=bool)
    n = len(wrong)
    order = np.argsort(-confidence, kind="stable")
    conf, wrong = confidence[order], wrong[order].astype(float)
    # block of tied confidences: every kept image in it is wrong at the block's error rate
    _, block, size = np.unique(-conf, return_inverse=True, return_counts=True)
    block_error = np.bincount(block, weights=wrong) / size
    expected_wrong = block_error[block]
    return np.cumsum(expected_wrong) / np.arange(1, n + 1)


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: mean risk over coverages 1/n..1."""
    if len(confidence) == 0:
        return np.nan
    return float(np.mean(_risks(confidence, correct)))  # per bootstrap sample: no DataFrame


def oracle_aurc(correct: np.ndarray) -> float:
    """AURC of the ordering that keeps every correct image first (the best possible)."""
    correct = np.asarray(correct, dtype=bool)
    return aurc(correct.astype(float), correct)


def random_aurc(correct: np.ndarray) -> float:
    """Expected AURC of a random ordering: the overall error at every coverage."""
    correct = np.asarray(correct, dtype=bool)
    return float(1 - correct.mean()) if len(correct) else np.nan


def balanced_risk_curve(confidence: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Balanced error (1 - mean recall over the true classes present among the kept) of the
    k most confident, k = 1..n, in the stable most-confident-first order; at a tie the
    coverage point is the end of the tied block (the block's members enter together)."""
    confidence = np.asarray(confidence, dtype=float)
    order = np.argsort(-confidence, kind="stable")
    y, pred, conf = np.asarray(y)[order], np.asarray(pred)[order], confidence[order]
    classes, codes = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    seen = np.cumsum(onehot, axis=0)
    right = np.cumsum(onehot * (pred == y)[:, None], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(seen > 0, right / np.maximum(seen, 1), np.nan)
    risk = 1 - np.nanmean(recall, axis=1)
    # inside a tied block only the block's end is reachable: carry it back over the block
    block_end = np.r_[conf[1:] != conf[:-1], True]
    ends = np.flatnonzero(block_end)
    return risk[ends[np.searchsorted(ends, np.arange(len(conf)))]]


def coverage_at_risk(
    confidence: np.ndarray, y: np.ndarray, pred: np.ndarray, max_risk: float
) -> float:
    """Largest share of images, kept most confident first, whose balanced error is at most
    `max_risk` (0 when no coverage reaches it)."""
    if len(confidence) == 0:
        return np.nan
    risk = balanced_risk_curve(confidence, y, pred)
    ok = np.flatnonzero(risk <= max_risk + 1e-12)
    return float((ok.max() + 1) / len(risk)) if len(ok) else 0.0
