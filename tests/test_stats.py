"""Clustered bootstrap, paired tests, Holm and power on small cases with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from microqa import metrics, stats


def _specimens(n_specimens=20, per_specimen=10, seed=0):
    """Each specimen's images are all right or all wrong (near-duplicates)."""
    rng = np.random.default_rng(seed)
    right = np.repeat(rng.random(n_specimens) < 0.7, per_specimen)
    y = np.repeat(np.array(["A", "B"] * (n_specimens // 2), dtype=object), per_specimen)
    pred = np.where(right, y, np.where(y == "A", "B", "A")).astype(object)
    groups = np.repeat(np.arange(n_specimens), per_specimen)
    return y, pred, groups


def test_every_class_is_in_every_resample_even_with_one_image():
    y = np.array(["SEM"] * 30 + ["TEM"] * 5 + ["AFM"], dtype=object)
    groups = np.arange(len(y)) // 2
    groups[-1] = 999  # the AFM image is its own specimen
    for index in stats.resamples(y, groups, n_boot=300, seed=1):
        assert set(y[index]) == {"SEM", "TEM", "AFM"}


def test_specimens_are_resampled_whole():
    y = np.array(["A"] * 12 + ["B"] * 12, dtype=object)
    groups = np.arange(24) // 4
    for index in stats.resamples(y, groups, n_boot=50, seed=0):
        counts = np.bincount(groups[index], minlength=6)
        assert (counts % 4 == 0).all()  # a specimen comes with all 4 of its images, or not
        assert len(index) == 24  # strata keep their number of specimens


def test_specimen_clusters_widen_the_interval():
    y, pred, groups = _specimens()
    clustered = stats.summarise(y, pred, groups, n_boot=400, seed=0)
    images = stats.summarise(y, pred, np.arange(len(y)), n_boot=400, seed=0)
    width = clustered["accuracy_ci_high"] - clustered["accuracy_ci_low"]
    naive = images["accuracy_ci_high"] - images["accuracy_ci_low"]
    assert width > 2 * naive  # 20 independent specimens, not 200 independent images
    assert clustered["n"] == 200 and clustered["n_specimens"] == 20
    assert clustered["accuracy"] == images["accuracy"]
    assert clustered["accuracy_ci_low"] <= clustered["accuracy"] <= clustered["accuracy_ci_high"]


def test_interval_is_the_95_percent_one():
    assert stats.interval(np.arange(1001)) == pytest.approx((25.0, 975.0))
    assert stats.LEVEL == 0.95
    y, pred, groups = _specimens()
    row = stats.summarise(y, pred, groups, n_boot=500, seed=3)
    codes = metrics.LabelCodes(y, metrics.clean_predictions(pred))
    boot = [codes.balanced_accuracy(i) for i in stats.resamples(y, groups, n_boot=500, seed=3)]
    assert row["balanced_accuracy_ci_low"] == pytest.approx(np.quantile(boot, 0.025))
    assert row["balanced_accuracy_ci_high"] == pytest.approx(np.quantile(boot, 0.975))
    assert row["ci_level"] == 0.95


def test_summary_point_values_and_unanswered():
    y = ["A", "A", "A", "B"]
    pred = ["A", "A", None, "A"]
    row = stats.summarise(y, pred, [1, 2, 3, 4], n_boot=20)
    assert row["accuracy"] == 0.5
    assert row["balanced_accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    assert row["unanswered_rate"] == 0.25


def test_mcnemar_is_exact_and_two_sided():
    a = [False] * 5 + [True] * 10
    b = [True] * 5 + [True] * 10
    result = metrics.mcnemar(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (0, 5)
    assert result["p_value"] == pytest.approx(2 * 0.5**5)  # one-sided would be 0.03125
    assert metrics.mcnemar(b, a)["p_value"] == result["p_value"]


def test_paired_difference_has_the_sign_of_a_minus_b_and_uses_both_methods():
    y = np.array(["A"] * 40 + ["B"] * 10, dtype=object)
    good = y.copy()
    bad = np.array(["A"] * 50, dtype=object)  # always "A": balanced accuracy 0.5
    groups = np.arange(50)
    ab = stats.paired_comparison(y, good, bad, groups, n_boot=300)
    ba = stats.paired_comparison(y, bad, good, groups, n_boot=300)
    assert ab["balanced_accuracy_difference"] == pytest.approx(0.5)
    assert ab["accuracy_difference"] == pytest.approx(0.2)
    assert ba["balanced_accuracy_difference"] == pytest.approx(-0.5)
    assert ab["balanced_accuracy_ci_low"] > 0 > ba["balanced_accuracy_ci_high"]
    assert (ab["only_a_correct"], ab["only_b_correct"]) == (10, 0)
    assert ab["p_mcnemar_accuracy"] == pytest.approx(2 * 0.5**10)
    # 10 specimens differ (all in a's favour): 2 of their 2^10 patterns are as extreme
    assert ab["p_sign_flip"] == pytest.approx(2 / 2**10, abs=0.0006)
    same = stats.paired_comparison(y, good, good, groups, n_boot=100)
    assert same["balanced_accuracy_difference"] == 0 and same["identical"]
    assert np.isnan(same["p_sign_flip"]) and np.isnan(same["p_mcnemar_accuracy"])


def test_holm_known_answer():
    adjusted = stats.holm([0.01, 0.04, 0.03, np.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_minimal_detectable_difference_at_80_percent_power():
    assert stats.mdd(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1, rel=1e-5)
    y, pred, groups = _specimens(n_specimens=40)
    other = np.where(np.arange(len(y)) % 3 == 0, y, pred)
    row = stats.paired_comparison(y, pred, other, groups, n_boot=400)
    assert row["mdd_80"] == pytest.approx(stats.mdd(row["balanced_accuracy_se"]))
    assert row["mdd_80"] > 0


def test_same_inputs_same_numbers():
    y, pred, groups = _specimens()
    assert stats.summarise(y, pred, groups, n_boot=50, seed=5) == stats.summarise(
        y, pred, groups, n_boot=50, seed=5
    )


def test_summary_columns_top2_and_empty_input():
    y = ["A", "B", "C", "A"]
    scores = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    pred = ["A", "A", "B", "C"]
    row = stats.summarise(
        y, pred, ["s1", "s2", "s3", "s1"], scores=scores, classes="ABC", n_boot=20
    )
    assert row["top2_accuracy"] == 0.75  # A yes, B yes, C yes (B, C), A no (C, B)
    assert row["n_specimens"] == 3 and row["ci_level"] == 0.95
    assert row["macro_precision"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert row["macro_recall"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert set(row) == {
        "n", "n_specimens", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall",
        "macro_f1", "unanswered_rate", "top2_accuracy", "ci_level",
        *(f"{m}_ci_{side}" for m in stats.CI_METRICS for side in ("low", "high")),
    }  # fmt: skip
    alone = [1, 2, 3, 4]
    assert "top2_accuracy" not in stats.summarise(y, pred, alone, n_boot=5)
    assert "top2_accuracy" not in stats.summarise(y, pred, alone, scores=scores, n_boot=5)
    assert stats.summarise(y, pred, alone, n_boot=5)["n_specimens"] == 4
    empty = stats.summarise([], [], [], n_boot=5)
    assert empty["n"] == 0 and np.isnan(empty["balanced_accuracy"])
    assert np.isnan(empty["accuracy_ci_low"]) and np.isnan(empty["macro_f1"])
    assert all(np.isnan(v) for v in stats.interval([]))
    assert stats.resamples([], [], n_boot=3) == []


def test_the_run_gives_the_resamples_and_the_seed_defaults_to_0():
    """No bootstrap size is assumed: the run's profile supplies it (full 1000, smoke 100)."""
    y, pred, groups = _specimens(n_specimens=40, per_specimen=3, seed=2)
    pred[::7] = None  # finer-grained metrics, so one more resample or another seed shows
    assert len(stats.resamples(y, groups, n_boot=7)) == 7
    assert [list(i) for i in stats.resamples(y, groups, n_boot=3)] == [
        list(i) for i in stats.resamples(y, groups, n_boot=3, seed=0)
    ]
    default = stats.summarise(y, pred, groups, n_boot=300)
    assert default == stats.summarise(y, pred, groups, n_boot=300, seed=0)
    assert default != stats.summarise(y, pred, groups, n_boot=301, seed=0)
    assert default != stats.summarise(y, pred, groups, n_boot=300, seed=1)
    other = np.roll(pred, 7)
    assert stats.paired_comparison(y, pred, other, groups, n_boot=50) == stats.paired_comparison(
        y, pred, other, groups, n_boot=50, seed=0
    )
    for call in (
        lambda: stats.summarise(y, pred, groups),
        lambda: stats.resamples(y, groups),
        lambda: stats.paired_comparison(y, pred, other, groups),
    ):
        with pytest.raises(TypeError, match="n_boot"):
            call()


def test_paired_interval_respects_specimens_and_its_se_is_the_balanced_one():
    y, pred, groups = _specimens(n_specimens=20, per_specimen=10)
    other = np.where(np.repeat(np.arange(20) % 4 == 0, 10), y, pred)
    clustered = stats.paired_comparison(y, pred, other, groups, n_boot=300, seed=2)
    naive = stats.paired_comparison(y, pred, other, np.arange(len(y)), n_boot=300, seed=2)
    width = clustered["balanced_accuracy_ci_high"] - clustered["balanced_accuracy_ci_low"]
    assert width > 2 * (naive["balanced_accuracy_ci_high"] - naive["balanced_accuracy_ci_low"])
    assert clustered["n_specimens"] == 20 and naive["n_specimens"] == 200
    a = metrics.LabelCodes(y, metrics.clean_predictions(pred))
    b = metrics.LabelCodes(y, metrics.clean_predictions(other))
    boot = [
        a.balanced_accuracy(i) - b.balanced_accuracy(i)
        for i in stats.resamples(y, groups, n_boot=300, seed=2)
    ]
    assert clustered["balanced_accuracy_se"] == pytest.approx(np.std(boot, ddof=1))
    assert clustered["ci_level"] == 0.95 and clustered["n"] == 200


def test_a_class_only_in_mixed_specimens_is_kept_by_its_stratum():
    y = np.array(["SEM"] * 40 + ["AFM", "SEM"], dtype=object)
    groups = np.array(list(range(40)) + [99, 99])  # the AFM image shares a specimen with SEM
    for index in stats.resamples(y, groups, n_boot=200, seed=0):
        assert "AFM" in set(y[index])


def test_holm_caps_at_one_and_keeps_order_for_ties():
    assert list(stats.holm([0.9, 0.95])) == [1.0, 1.0]
    assert list(stats.holm([0.02, 0.02, 0.5])) == pytest.approx([0.06, 0.06, 0.5])


def test_a_specimens_stratum_is_its_rarest_class_not_its_first_by_name():
    # the one SEM image shares a specimen with an AFM image; SEM is the rarer class, so that
    # specimen is the SEM stratum by itself and SEM is in every resample
    y = np.array(["AFM"] * 40 + ["SEM", "AFM"], dtype=object)
    groups = np.array(list(range(40)) + [99, 99])
    for index in stats.resamples(y, groups, n_boot=200, seed=0):
        assert "SEM" in set(y[index])


def test_empty_and_one_resample_give_nan_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = stats.summarise([], [], [], n_boot=5)
        assert np.isnan(empty["accuracy"]) and np.isnan(empty["unanswered_rate"])
        pair = stats.paired_comparison([], [], [], [], n_boot=5)
        assert np.isnan(pair["balanced_accuracy_difference"])
        assert np.isnan(pair["accuracy_difference"])
        y, pred, groups = _specimens()
        once = stats.paired_comparison(y, pred, np.roll(pred, 10), groups, n_boot=1)
        assert np.isnan(once["balanced_accuracy_se"])  # no spread from one resample
    twice = stats.paired_comparison(y, pred, np.roll(pred, 10), groups, n_boot=2)
    assert np.isfinite(twice["balanced_accuracy_se"])


def test_paired_row_columns_and_its_se_and_p_come_from_balanced_accuracy():
    # imbalanced classes, so balanced accuracy and accuracy resample differently
    rng = np.random.default_rng(4)
    y = np.array(["A"] * 45 + ["B"] * 15, dtype=object)
    pred_a = np.where(rng.random(60) < 0.8, y, np.where(y == "A", "B", "A")).astype(object)
    pred_b = np.where(rng.random(60) < 0.6, y, "A").astype(object)
    groups = np.arange(60) // 2
    row = stats.paired_comparison(y, pred_a, pred_b, groups, n_boot=100, seed=1)
    assert list(row) == [
        "n", "n_specimens", "identical",
        "balanced_accuracy_difference", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high",
        "balanced_accuracy_se", "p_sign_flip", "n_sign_patterns", "mdd_80",
        "accuracy_difference", "accuracy_ci_low", "accuracy_ci_high",
        "only_a_correct", "only_b_correct", "p_mcnemar_accuracy", "ci_level",
    ]  # fmt: skip
    assert (row["n"], row["n_specimens"]) == (60, 30)
    samples = stats.resamples(y, groups, n_boot=100, seed=1)

    def boot(metric):  # the scikit-learn formulas on each resample
        return np.array([metric(y[i], pred_a[i]) - metric(y[i], pred_b[i]) for i in samples])

    balanced, plain = boot(metrics.balanced_accuracy), boot(metrics.accuracy)
    assert np.std(balanced, ddof=1) != pytest.approx(np.std(plain, ddof=1))
    assert row["balanced_accuracy_se"] == pytest.approx(np.std(balanced, ddof=1))
    assert row["p_sign_flip"] == stats.sign_flip_p(y, pred_a, pred_b, groups, seed=1)[0]


def test_holm_treats_a_missing_p_value_as_nan():
    # two real p-values: 2 * 0.01, then max(0.02, 1 * 0.04)
    adjusted = stats.holm([0.01, None, 0.04])
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and np.isnan(adjusted[1])


def test_integer_labels_with_missing_answers_in_a_paired_comparison():
    # a: right on 0, 2, 3, 4 (no answer on 1): accuracy 0.8, recalls 2/3 and 1
    # b: always 0: accuracy 0.6, recalls 1 and 0
    y = [0, 0, 0, 1, 1]
    row = stats.paired_comparison(y, [0, None, 0, 1, 1], [0] * 5, range(5), n_boot=20)
    assert row["accuracy_difference"] == pytest.approx(0.8 - 0.6)
    assert row["balanced_accuracy_difference"] == pytest.approx((2 / 3 + 1) / 2 - 0.5)
    assert (row["only_a_correct"], row["only_b_correct"]) == (2, 1)


def _eight_specimens():
    """8 specimens, 3 classes, unequal class sizes, so balanced accuracy weighs images
    unequally; a and b differ on some images of most specimens."""
    y = np.array(list("AAABBAAACCAABBBCAAACCB"), dtype=object)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7])
    a = np.array(list("AAABAAAACBAABBACAAACCB"), dtype=object)
    b = np.array(list("ABABBBAACCCABAACBAABCB"), dtype=object)
    return y, a, b, groups


def test_sign_flip_p_is_the_exact_enumeration_of_swapped_specimens():
    """Reference: every one of the 2^8 ways of swapping a and b's predictions on whole
    specimens, each scored with scikit-learn's balanced accuracy."""
    y, a, b, groups = _eight_specimens()
    observed = metrics.balanced_accuracy(y, a) - metrics.balanced_accuracy(y, b)
    assert observed != 0
    deltas = []
    for pattern in range(2**8):
        swap = np.array([(pattern >> g) & 1 for g in groups], dtype=bool)
        a_star, b_star = np.where(swap, b, a), np.where(swap, a, b)
        deltas.append(metrics.balanced_accuracy(y, a_star) - metrics.balanced_accuracy(y, b_star))
    expected = np.mean(np.abs(deltas) >= abs(observed) - 1e-12)
    p, used = stats.sign_flip_p(y, a, b, groups)
    assert used == 256 and p == pytest.approx(expected)
    assert 2 / 256 <= p < 1  # not a degenerate case
    assert stats.sign_flip_p(y, b, a, groups)[0] == pytest.approx(p)  # two-sided
    # images taken as independent: 22 "clusters", a different (smaller) p
    assert stats.sign_flip_p(y, a, b, np.arange(len(y)))[0] != pytest.approx(p)


def test_sign_flip_monte_carlo_agrees_with_the_exact_p_and_counts_the_observed_pattern():
    rng = np.random.default_rng(7)
    y = np.array(["A", "B", "C"] * 24, dtype=object)
    groups = np.arange(72) // 6  # 12 specimens: 4096 patterns
    a = np.where(rng.random(72) < 0.6, y, "A").astype(object)
    b = np.where(rng.random(72) < 0.5, y, "B").astype(object)
    exact, used = stats.sign_flip_p(y, a, b, groups, n_permutations=5000)
    assert used == 4096
    sampled, used = stats.sign_flip_p(y, a, b, groups, n_permutations=4000, seed=3)
    assert used == 4000 and sampled == pytest.approx(exact, abs=0.03)
    # the (1 + extreme) / (1 + B) rule: never 0, its floor is 1 / (B + 1)
    y2 = np.array(["A", "B"] * 200, dtype=object)
    never, used = stats.sign_flip_p(y2, y2, np.roll(y2, 1), np.arange(400) // 2, n_permutations=999)
    assert used == 999 and never == pytest.approx(1 / 1000)


def test_a_clear_difference_is_significant_after_holm_and_the_test_is_of_balanced_accuracy():
    # 60 specimens; a right on 90% of specimens, b on 40%: CI far from 0
    rng = np.random.default_rng(1)
    specimens = 60
    per = 4
    y = np.repeat(np.array(["A", "B", "C"] * 20, dtype=object), per)
    groups = np.repeat(np.arange(specimens), per)
    right_a = np.repeat(rng.random(specimens) < 0.9, per)
    right_b = np.repeat(rng.random(specimens) < 0.4, per)
    wrong = np.where(y == "A", "B", "A").astype(object)
    a, b = np.where(right_a, y, wrong), np.where(right_b, y, wrong)
    row = stats.paired_comparison(y, a, b, groups, n_boot=300)
    assert row["balanced_accuracy_ci_low"] > 0.2
    family = pd.DataFrame([row] * 10)  # a family of ten such pairs
    corrected = stats.with_family(family)
    assert (corrected["p_sign_flip_holm"] < 0.05 / 10).all()
    assert row["n_sign_patterns"] == stats.N_PERMUTATIONS
    assert stats.N_PERMUTATIONS >= stats.permutations_for(10)


def test_sign_flip_tests_balanced_accuracy_not_accuracy():
    # a is right on the 2 rare-class images of every specimen and wrong on 3 common ones;
    # b the reverse: accuracy favours b, balanced accuracy favours a
    y = np.tile(np.array(["A", "A", "A", "A", "A", "B", "B"], dtype=object), 30)
    groups = np.repeat(np.arange(30), 7)
    a = np.tile(np.array(["A", "A", "B", "B", "B", "B", "B"], dtype=object), 30)
    b = np.tile(np.array(["A", "A", "A", "A", "A", "A", "A"], dtype=object), 30)
    row = stats.paired_comparison(y, a, b, groups, n_boot=200)
    assert row["accuracy_difference"] < 0 < row["balanced_accuracy_difference"]
    assert row["p_sign_flip"] < 0.001  # every specimen pushes Δ balanced accuracy up


def test_identical_pairs_are_no_test_and_leave_the_family_size():
    y, a, b, groups = _eight_specimens()
    same = stats.paired_comparison(y, a, a.copy(), groups, n_boot=50)
    assert same["identical"] and np.isnan(same["p_sign_flip"])
    assert same["n_sign_patterns"] == 0
    # same correctness, different wrong answers: a test (Δ = 0, p = 1), not identical
    wrong_other = np.where(a == y, a, np.where(a == "A", "C", "A")).astype(object)
    differ = stats.paired_comparison(y, a, wrong_other, groups, n_boot=50)
    assert not differ["identical"] and differ["p_sign_flip"] == 1.0
    diff = stats.paired_comparison(y, a, b, groups, n_boot=50)
    table = stats.with_family(pd.DataFrame([same, diff, differ]))
    assert list(table["family_size"]) == [2, 2, 2]
    assert np.isnan(table["p_sign_flip_holm"].iloc[0])
    assert table["p_sign_flip_holm"].iloc[1] == pytest.approx(min(1, 2 * diff["p_sign_flip"]))
    assert np.isnan(table["mdd_80_corrected"].iloc[0])


def test_minimal_detectable_difference_at_holms_first_step():
    # α/m = 0.05/5: (z_0.999 + z_0.80) · SE, about 1.4x the uncorrected one
    assert stats.mdd(0.1, alpha=0.01) == pytest.approx((2.575829 + 0.841621) * 0.1, rel=1e-5)
    rows = pd.DataFrame(
        {"p_sign_flip": [0.01, 0.2, 0.03, 0.5, 0.04], "balanced_accuracy_se": [0.05] * 5}
    )
    table = stats.with_family(rows)
    assert table["mdd_80_corrected"].to_numpy() == pytest.approx(
        [(2.575829 + 0.841621) * 0.05] * 5, rel=1e-5
    )
    assert (table["mdd_80_corrected"] > stats.mdd(0.05)).all()
    assert stats.permutations_for(5) == 2000  # 20 * 5 / 0.05


def test_every_interval_function_requires_its_cluster():
    y, a, b, groups = _eight_specimens()
    for call in (
        lambda: stats.summarise(y, a, None, n_boot=5),
        lambda: stats.resamples(y, None, n_boot=5),
        lambda: stats.paired_comparison(y, a, b, None, n_boot=5),
        lambda: stats.sign_flip_p(y, a, b, None),
        lambda: stats.summarise(y, a, groups[:-1], n_boot=5),
    ):
        with pytest.raises(ValueError, match="groups"):
            call()
    with pytest.raises(TypeError):
        stats.summarise(y, a, n_boot=5)  # no default: a forgotten cluster is an error, not images


def test_resamples_are_drawn_once_per_input_and_cannot_be_changed_by_a_caller():
    y = np.array(["a", "a", "b", "b", "b", "c"])
    groups = np.array([1, 1, 2, 3, 3, 4])
    first = stats.resamples(y, groups, n_boot=5, seed=1)
    again = stats.resamples(list(y), list(groups), n_boot=5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = stats.resamples(y, groups, n_boot=5, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    with pytest.raises(ValueError, match="read-only"):
        first[0][0] = 0
    # every sample keeps whole clusters: specimen 3 brings both its images, in order
    for sample in first:
        drawn = list(sample)
        assert drawn.count(3) == drawn.count(4) and drawn.count(0) == drawn.count(1)
