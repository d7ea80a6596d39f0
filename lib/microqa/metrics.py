"""Classification metric formulas (scikit-learn underneath); CIs and tests live in `stats`.

A missing prediction (None: a VLM answer that committed to no option) counts as wrong in
every metric and is never replaced by a guess. Macro metrics average over the classes
present in y_true, so a class that never occurs cannot inflate or deflate them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn import metrics as skm

NO_ANSWER = "<no answer>"


def clean_predictions(y_pred: Sequence) -> np.ndarray:
    return np.array([NO_ANSWER if p is None or p != p else p for p in y_pred], dtype=object)


def _classes(y_true: Sequence) -> list:
    return sorted(set(y_true))


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    return float(np.mean(np.asarray(y_true) == clean_predictions(y_pred)))


def _whole(y_true: Sequence, y_pred: Sequence, what: str) -> tuple[LabelCodes, np.ndarray]:
    """The labels as codes and the index of every image, for a metric `what` of the whole set."""
    truth = np.asarray(y_true, dtype=object)
    if truth.size == 0:
        raise ValueError(f"{what} of no images")
    return LabelCodes(truth, clean_predictions(y_pred)), np.arange(truth.size)


def balanced_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Mean recall over the classes present in y_true (the very arithmetic of scikit-learn's
    macro recall, without its input checks: the hybrids call this thousands of times)."""
    codes, every = _whole(y_true, y_pred, "balanced accuracy")
    return codes.balanced_accuracy(every)


def macro_prf(y_true: Sequence, y_pred: Sequence) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the classes present in y_true: scikit-learn's
    `precision_recall_fscore_support(..., average="macro", zero_division=0)` arithmetic
    without its input checks: 0.14 ms a call instead of 3.5 ms on 60 images (measured on the
    development machine); the probes make one call per fold seed of every probe."""
    codes, every = _whole(y_true, y_pred, "macro precision/recall/F1")
    return codes.macro_prf(every)


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    return macro_prf(y_true, y_pred)[2]


def top_k_accuracy(y_true: Sequence, scores: np.ndarray, classes: Sequence, k: int) -> float:
    """Fraction whose true class is among the k highest-scoring of `classes` (ties: lower index)."""
    scores = np.asarray(scores, dtype=float)
    index = {c: i for i, c in enumerate(classes)}
    true_idx = np.array([index[t] for t in y_true])
    order = np.argsort(-scores, kind="stable")[:, :k]  # along each row
    return float(np.mean([t in row for t, row in zip(true_idx, order, strict=True)]))


class LabelCodes:
    """y_true / y_pred as integer codes, for fast metrics on bootstrap index samples.

    Macro metrics average over the classes present in the (resampled) y_true, like
    `balanced_accuracy` and `macro_prf`; precision of a never-predicted class is 0.
    """

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray):
        labels = {c: i for i, c in enumerate(sorted(set(y_true) | set(y_pred), key=str))}
        self.classes = list(labels)  # code i is classes[i]
        self.k = len(labels)
        self.t = np.array([labels[c] for c in y_true], dtype=np.int64)
        self.p = np.array([labels[c] for c in y_pred], dtype=np.int64)

    def _counts(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t, p = self.t[i], self.p[i]
        support = np.bincount(t, minlength=self.k)
        predicted = np.bincount(p, minlength=self.k)
        correct = np.bincount(t[t == p], minlength=self.k)
        return support, predicted, correct, support > 0

    def accuracy(self, i: np.ndarray) -> float:
        return float(np.mean(self.t[i] == self.p[i]))

    def balanced_accuracy(self, i: np.ndarray) -> float:
        support, _, correct, present = self._counts(i)
        return float(np.mean(correct[present] / support[present]))

    def macro_prf(self, i: np.ndarray) -> tuple[float, float, float]:
        support, predicted, correct, present = self._counts(i)
        support, predicted, correct = support[present], predicted[present], correct[present]
        # a class never predicted has precision 0 (scikit-learn's zero_division=0)
        precision = np.divide(correct, predicted, out=np.zeros(len(correct)), where=predicted > 0)
        f1 = 2 * correct / (support + predicted)  # scikit-learn's 2TP / (2TP + FN + FP)
        return float(np.mean(precision)), float(np.mean(correct / support)), float(np.mean(f1))

    def macro_f1(self, i: np.ndarray) -> float:
        support, predicted, correct, present = self._counts(i)
        # 2TP + FP + FN = support + predicted, never 0 for a class present in y_true
        f1 = 2 * correct[present] / (support[present] + predicted[present])
        return float(np.mean(f1))

    def _sample_counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(support, correct) per class in every bootstrap sample: one matrix product each
        (exact: whole numbers)."""
        truth = np.eye(self.k)[self.t]
        return weights @ truth, weights @ (truth * (self.t == self.p)[:, None])

    def class_recalls_on_samples(self, weights: np.ndarray) -> np.ndarray:
        """(samples, classes) recall of each class (`classes`) in every bootstrap sample of
        `weights` (`sample_weights`); nan where a sample holds none of the class."""
        support, correct = self._sample_counts(weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            return correct / support

    def on_samples(self, name: str, weights: np.ndarray) -> np.ndarray:
        """Metric `name` (accuracy, balanced_accuracy, macro_f1) of every bootstrap sample at
        once: `weights[b, j]` is how often image j is in sample b (`sample_weights`). The
        class counts of all samples are one matrix product (exact: whole numbers); each value
        equals the per-sample method's up to the order of a float sum (last digit)."""
        if name == "accuracy":
            return (weights @ (self.t == self.p).astype(float)) / weights.sum(axis=1)
        support, correct = self._sample_counts(weights)
        present = support > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            if name == "balanced_accuracy":
                per_class = correct / support
            elif name == "macro_f1":
                per_class = 2 * correct / (support + weights @ np.eye(self.k)[self.p])
            else:
                raise ValueError(f"no per-sample form of {name!r}")
        return np.where(present, per_class, 0.0).sum(axis=1) / present.sum(axis=1)


def sample_weights(samples: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(samples, n) float matrix: how often each of n images is in each bootstrap sample."""
    if not len(samples):
        return np.zeros((0, n))
    rows = np.repeat(np.arange(len(samples)), [len(s) for s in samples])
    flat = rows * n + np.concatenate(samples)
    return np.bincount(flat, minlength=len(samples) * n).reshape(len(samples), n).astype(float)


def per_class_table(y_true: Sequence, y_pred: Sequence) -> pd.DataFrame:
    classes = _classes(y_true)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, clean_predictions(y_pred), labels=classes, zero_division=0
    )
    return pd.DataFrame(
        {"class": classes, "precision": p, "recall": r, "f1": f, "n": s.astype(int)}
    )


def confusion(y_true: Sequence, y_pred: Sequence, classes: Sequence) -> pd.DataFrame:
    """Confusion counts (rows: truth, columns: prediction, plus a no-answer column if any)."""
    y_pred = clean_predictions(y_pred)
    columns = list(classes) + ([NO_ANSWER] if (y_pred == NO_ANSWER).any() else [])
    matrix = skm.confusion_matrix(y_true, y_pred, labels=columns)
    return pd.DataFrame(matrix[: len(classes)], index=list(classes), columns=columns)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float | int]:
    """Exact two-sided McNemar test on paired correctness of two methods on the same images."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    # binomtest's defaults: success probability 1/2, two-sided
    p = 1.0 if discordant == 0 else binomtest(only_a, discordant).pvalue
    return {"n": len(a), "only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p)}
