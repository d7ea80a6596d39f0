"""compare/baselines.py: the chance row's expected metrics by hand; the majority class chosen
on the other fold; both rows in the comparison table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from microqa import calibration
from microqa.compare import baselines
from microqa.data import taxonomy

CLASSES = taxonomy.TASKS["technique"][1]  # 5 options


def test_chance_row_is_the_expected_uniform_guess_by_hand():
    y = np.array([CLASSES[0]] * 3 + [CLASSES[1]])
    row = baselines.chance_summary(y, np.arange(4), 5, n_boot=50, seed=0)
    assert row["accuracy"] == row["balanced_accuracy"] == row["macro_recall"] == 0.2
    assert row["balanced_accuracy_ci_low"] == row["balanced_accuracy_ci_high"] == 0.2
    # shares 3/4 and 1/4: precision = share, recall 1/5, F1 = 2 s/5 / (s + 1/5)
    assert row["macro_precision"] == pytest.approx(0.5)
    assert row["macro_f1"] == pytest.approx((0.3 / 0.95 + 0.1 / 0.45) / 2)
    assert row["top2_accuracy"] == pytest.approx(0.4)


def test_chance_macro_f1_matches_the_average_of_many_uniform_guesses():
    rng = np.random.default_rng(0)
    y = rng.choice(CLASSES[:3], 3000, p=[0.6, 0.3, 0.1])
    draws = [skm.f1_score(y, rng.choice(CLASSES, len(y)), labels=CLASSES[:3], average="macro")
             for _ in range(20)]  # fmt: skip
    row = baselines.chance_summary(y, np.arange(len(y)), 5, n_boot=20, seed=0)
    assert row["macro_f1"] == pytest.approx(np.mean(draws), abs=0.01)


def test_chance_probabilities_score_brier_one_minus_one_over_k_and_nll_log_k():
    truth = pd.Series(list(CLASSES) * 2)
    probs = baselines.chance(truth, "technique").probabilities.to_numpy()
    y = np.array([CLASSES.index(c) for c in truth])
    assert calibration.brier(probs, y) == pytest.approx(1 - 1 / 5)
    assert calibration.nll(probs, y) == pytest.approx(np.log(5))


def _two_folds():
    """Fold 0 is mostly SEM, fold 1 mostly TEM."""
    ids = pd.RangeIndex(1, 21)
    folds = pd.Series([0] * 10 + [1] * 10, index=ids)
    truth = pd.Series(
        [CLASSES[0]] * 7 + [CLASSES[1]] * 3 + [CLASSES[1]] * 6 + [CLASSES[2]] * 4, index=ids
    )
    return truth, folds


def test_majority_class_and_shares_come_from_the_other_fold():
    truth, folds = _two_folds()
    method = baselines.majority(truth, folds, "technique")
    assert set(method.predictions[folds == 1]) == {CLASSES[0]}  # fold 0's majority
    assert set(method.predictions[folds == 0]) == {CLASSES[1]}  # fold 1's majority
    assert method.probabilities.loc[11, CLASSES[0]] == pytest.approx(0.7)
    assert method.probabilities.loc[1, CLASSES[2]] == pytest.approx(0.4)
    # shuffling fold 1's labels leaves fold 1's predictions as they were
    shuffled = truth.copy()
    shuffled[folds == 1] = [CLASSES[4]] * 10
    again = baselines.majority(shuffled, folds, "technique")
    pd.testing.assert_series_equal(again.predictions[folds == 1], method.predictions[folds == 1])


def test_majority_of_a_stable_class_mix_has_balanced_accuracy_one_over_classes_present():
    ids = pd.RangeIndex(1, 41)
    folds = pd.Series(np.tile([0, 1], 20), index=ids)
    truth = pd.Series(np.repeat([CLASSES[0], CLASSES[1], CLASSES[2], CLASSES[0]], 10), index=ids)
    groups = pd.Series(ids.astype(str), index=ids)
    rows = baselines.rows(truth, folds, groups, "technique", "all labelled", 50, 0)
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["majority"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert by_kind["majority"]["accuracy"] == pytest.approx(0.5)
    assert by_kind["chance"]["accuracy"] == pytest.approx(1 / 5)
    assert by_kind["majority"]["label"].startswith("majority class")
    assert {r["subset"] for r in rows} == {"all labelled"}
