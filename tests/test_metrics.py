"""metrics.py: classification metrics against scikit-learn; missing answers; McNemar."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from microqa import metrics


def test_metrics_agree_with_scikit_learn_on_random_inputs():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    y_true = rng.choice(classes, 300, p=[0.6, 0.2, 0.15, 0.05])
    y_pred = rng.choice(classes, 300)
    row = metrics.summarise(y_true, y_pred, n_boot=200)
    assert row["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert row["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert row["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
    scores = rng.random((300, 4))
    assert metrics.top_k_accuracy(y_true, scores, classes, 2) == pytest.approx(
        skm.top_k_accuracy_score(y_true, scores, k=2, labels=classes)
    )


def test_missing_answers_count_as_wrong_never_as_a_guess():
    y_true = ["a", "a", "b", "b"]
    row = metrics.summarise(y_true, ["a", None, "b", None], n_boot=50)
    assert row["accuracy"] == 0.5
    assert row["unanswered_rate"] == 0.5
    assert row["balanced_accuracy"] == 0.5


def test_mcnemar_detects_a_real_difference_only():
    a = [True] * 40 + [False] * 10
    assert metrics.mcnemar(a, a)["p_value"] == 1.0
    b = [False] * 30 + [True] * 10 + [False] * 10
    assert metrics.mcnemar(a, b)["p_value"] < 0.001
