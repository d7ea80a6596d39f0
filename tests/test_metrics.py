"""metrics.py: classification metrics against scikit-learn; missing answers; McNemar."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from microqa import metrics, stats


def test_metrics_agree_with_scikit_learn_on_random_inputs():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    y_true = rng.choice(classes, 300, p=[0.6, 0.2, 0.15, 0.05])
    y_pred = rng.choice(classes, 300)
    row = stats.summarise(y_true, y_pred, np.arange(300) // 3, n_boot=200)
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
    row = stats.summarise(y_true, ["a", None, "b", None], [1, 2, 3, 4], n_boot=50)
    assert row["accuracy"] == 0.5
    assert row["unanswered_rate"] == 0.5
    assert row["balanced_accuracy"] == 0.5


def test_mcnemar_detects_a_real_difference_only():
    a = [True] * 40 + [False] * 10
    assert metrics.mcnemar(a, a)["p_value"] == 1.0
    b = [False] * 30 + [True] * 10 + [False] * 10
    assert metrics.mcnemar(a, b)["p_value"] < 0.001


def test_macro_metrics_average_over_true_classes_only_and_quietly():
    # a: predicted at images 0 and 4, right at 0 -> P 1/2, R 1/2, F 1/2
    # b: predicted at 2 and 3, both right -> P 1, R 1, F 1
    # c: never predicted -> P 0 (not 0/0, not a warning), R 0, F 0
    # the missing answer is wrong and is not a class of its own: macro over a, b, c
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", None, "b", "b", "a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.macro_prf(y_true, y_pred) == pytest.approx((1.5 / 3, 1.5 / 3, 1.5 / 3))
        assert metrics.macro_f1(y_true, y_pred) == pytest.approx(0.5)
        assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx(0.5)
        assert metrics.accuracy(y_true, y_pred) == pytest.approx(3 / 5)


def test_per_class_table_known_answer():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", None, "z"]  # "z" is no class of y_true: no row of its own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # c, never predicted, has precision 0 quietly
        table = metrics.per_class_table(y_true, y_pred)
    expected = pd.DataFrame(
        {
            "class": ["a", "b", "c"],
            # a: 2 predicted, both right, of 3; b: 2 predicted, 1 right, of 2; c: none
            "precision": [1.0, 0.5, 0.0],
            "recall": [2 / 3, 0.5, 0.0],
            "f1": [0.8, 0.5, 0.0],  # 2PR / (P + R)
            "n": np.array([3, 2, 1], dtype=int),
        }
    )
    pd.testing.assert_frame_equal(table, expected)


def test_confusion_keeps_the_callers_class_order_and_adds_no_answer_only_when_needed():
    classes = ["b", "a", "c"]
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", None, "z"]  # "z" is not an option: counted nowhere
    expected = pd.DataFrame(
        [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]],
        index=classes,
        columns=[*classes, metrics.NO_ANSWER],
    )
    pd.testing.assert_frame_equal(metrics.confusion(y_true, y_pred, classes), expected)
    answered = metrics.confusion(["a", "b"], ["a", "a"], ["a", "b"])
    pd.testing.assert_frame_equal(
        answered, pd.DataFrame([[1, 0], [1, 0]], index=["a", "b"], columns=["a", "b"])
    )


def test_fast_bootstrap_metrics_agree_with_the_scikit_learn_ones_on_every_subsample():
    # "z" is predicted but never true and sorts after every true class; "c" has one image
    y_true = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
    y_pred = metrics.clean_predictions(["a", "z", "b", "b", None, "c"])
    codes = metrics.LabelCodes(y_true, y_pred)
    whole = np.arange(6)
    assert codes.accuracy(whole) == pytest.approx(3 / 6)
    assert codes.balanced_accuracy(whole) == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    # F1 = 2TP / (support + predicted): a 2/4, b 2/4, c 2/2
    assert codes.macro_f1(whole) == pytest.approx((0.5 + 0.5 + 1) / 3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        i = rng.integers(0, 6, 6)
        t, p = y_true[i], list(y_pred[i])
        assert codes.accuracy(i) == pytest.approx(metrics.accuracy(t, p))
        assert codes.balanced_accuracy(i) == pytest.approx(metrics.balanced_accuracy(t, p))
        assert codes.macro_f1(i) == pytest.approx(metrics.macro_f1(t, p))


def test_every_bootstrap_sample_scored_at_once_equals_scoring_each_sample():
    # classes absent from some samples, a prediction outside the truth's classes, no answer
    rng = np.random.default_rng(1)
    y_true = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), 40, p=[0.6, 0.2, 0.15, 0.05])
    y_pred = metrics.clean_predictions(rng.choice(np.array(["a", "b", "c", "z", None]), 40))
    codes = metrics.LabelCodes(y_true, y_pred)
    samples = [rng.integers(0, 40, 40) for _ in range(200)]
    weights = metrics.sample_weights(samples, 40)
    assert weights.shape == (200, 40) and (weights.sum(axis=1) == 40).all()
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        each = [getattr(codes, name)(i) for i in samples]
        np.testing.assert_allclose(codes.on_samples(name, weights), each, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no per-sample form of 'top2'"):
        codes.on_samples("top2", weights)
    assert metrics.sample_weights([], 5).shape == (0, 5)
    recalls = codes.class_recalls_on_samples(weights)  # per class, nan where a class is absent
    for row, i in zip(recalls, samples, strict=True):
        for k, c in enumerate(codes.classes):
            mine = y_true[i] == c
            expected = np.mean(y_pred[i][mine] == c) if mine.any() else np.nan
            np.testing.assert_equal(row[k], expected)


def test_top_k_ties_go_to_the_lower_index_on_wide_rows():
    # 40 options scored 0, 1 or 2: many ties, and rows long enough for numpy's default
    # (unstable) sort to reorder them
    rng = np.random.default_rng(0)
    classes = [f"class {j:02d}" for j in range(40)]
    scores = rng.integers(0, 3, (60, 40)).astype(float)
    tied_first = [np.flatnonzero(row == row.max()) for row in scores]
    first = [classes[t[0]] for t in tied_first]
    second = [classes[t[1]] for t in tied_first]  # each row has several maxima here
    assert metrics.top_k_accuracy(first, scores, classes, 1) == 1.0
    assert metrics.top_k_accuracy(second, scores, classes, 1) == 0.0
    assert metrics.top_k_accuracy(second, scores, classes, 2) == 1.0


def test_top_k_takes_one_hot_booleans_and_refuses_misaligned_inputs():
    one_hot = np.array([[True, False, False], [False, False, True]])
    assert metrics.top_k_accuracy(["a", "b"], one_hot, "abc", 1) == 0.5
    assert metrics.top_k_accuracy(["a", "b"], one_hot, "abc", 2) == 0.5  # b ties a, a first
    with pytest.raises(ValueError):
        metrics.top_k_accuracy(["a"], one_hot, "abc", 1)


def test_integer_labels_with_a_missing_answer():
    assert metrics.accuracy([1, 2], [1, None]) == 0.5


def test_mcnemar_row_and_numeric_correctness():
    # 0/1 floats (a merged table's column) count like booleans; 5 discordant pairs all for a:
    # exact two-sided p = 2 * 0.5**5
    a = [1.0] * 5 + [1.0, 1.0, 0.0]
    b = [0.0] * 5 + [1.0, 1.0, 0.0]
    assert metrics.mcnemar(a, b) == {
        "n": 8,
        "only_a_correct": 5,
        "only_b_correct": 0,
        "p_value": pytest.approx(2 * 0.5**5),
    }


def _random_truth_and_answers(seed: int, cases: int = 300):
    """Small random label sets with no-answers, predictions of a class absent from the truth
    ("SEM") and classes never predicted."""
    rng = np.random.default_rng(seed)
    for _ in range(cases):
        n = int(rng.integers(1, 80))
        yield (
            rng.choice(["Metal", "Ceramic", "Polymer", "Composite"], n),
            rng.choice(["Metal", "Ceramic", "Polymer", "Composite", "SEM", None], n),
        )


def test_balanced_accuracy_is_scikit_learns_macro_recall_to_the_last_bit():
    # the hand-written formula replaces sklearn's (its input checks dominated notebook 05), so
    # it must give the very same floats
    for y_true, y_pred in _random_truth_and_answers(7):
        expected = skm.recall_score(
            y_true,
            metrics.clean_predictions(y_pred),
            labels=sorted(set(y_true)),
            average="macro",
        )
        assert metrics.balanced_accuracy(y_true, y_pred) == float(expected)


def test_macro_precision_recall_f1_are_scikit_learns_to_the_last_bit():
    # hand-written like balanced accuracy (sklearn's input checks were most of the probes'
    # time); a never-predicted class has precision 0
    for y_true, y_pred in _random_truth_and_answers(11):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true,
            metrics.clean_predictions(y_pred),
            labels=sorted(set(y_true)),
            average="macro",
            zero_division=0,
        )
        assert metrics.macro_prf(y_true, y_pred) == (float(p), float(r), float(f))


def test_macro_metrics_of_no_images_are_an_error_not_nan():
    with pytest.raises(ValueError, match="no images"):
        metrics.macro_prf([], [])
