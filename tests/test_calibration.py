"""calibration.py: hand-worked ECE, Brier, NLL and AURC; agreement with scikit-learn; the
temperature fit recovers a planted temperature."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from microqa import calibration


def test_ece_with_equal_mass_bins_by_hand():
    # 2 bins cut at the median 0.85: {0.8, 0.6} (conf 0.7, acc 1) and {0.9, 0.9} (0.9, 0.5)
    conf = np.array([0.9, 0.9, 0.8, 0.6])
    correct = np.array([True, False, True, True])
    bins = calibration.reliability_bins(conf, correct, n_bins=2)
    assert list(bins["n"]) == [2, 2]
    assert list(bins["confidence"]) == pytest.approx([0.7, 0.9])
    assert list(bins["accuracy"]) == pytest.approx([1.0, 0.5])
    assert calibration.ece(conf, correct, n_bins=2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.4)
    # one bin: |mean accuracy - mean confidence| = |0.75 - 0.8|
    assert calibration.ece(conf, correct, n_bins=1) == pytest.approx(0.05)


def test_equal_mass_edges_are_numpys_percentiles_to_the_last_bit():
    """The bin edges are computed without np.percentile's machinery: they must be its floats,
    == on every edge, for sizes from 1 up, ties, constant and two-valued confidences, top-label
    confidences near 1 and 1/k, and other bin counts."""
    rng = np.random.default_rng(0)
    cases = [rng.random(n) for n in (1, 2, 3, 9, 10, 11, 59, 60, 61, 839, 1000)]
    cases += [np.round(rng.random(n), d) for n in (7, 60, 500) for d in (1, 2)]  # ties
    cases += [np.full(13, 0.25), np.repeat([0.2, 0.9], [3, 40]), 1 - rng.random(300) ** 8 / 1e6]
    cases += [rng.dirichlet(np.ones(5), 200).max(axis=1), np.full(4, 1 / 3)]
    for values in cases:
        for n_bins in (calibration.N_BINS, 3, 7, 15):
            expected = np.percentile(values, np.linspace(0, 100, n_bins + 1))
            got = calibration.equal_mass_edges(values, n_bins)
            assert got.tolist() == expected.tolist(), (len(values), n_bins)


def test_tied_confidences_share_a_bin():
    conf = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.95])
    bins = calibration.equal_mass_bins(conf, n_bins=3)
    assert len(set(bins[:4])) == 1


def test_reliability_bins_agree_with_scikit_learn_quantile_strategy():
    rng = np.random.default_rng(0)
    conf = rng.beta(5, 1, 500)
    correct = rng.random(500) < conf**2
    for n_bins in (5, 10, 15):
        prob_true, prob_pred = calibration_curve(correct, conf, n_bins=n_bins, strategy="quantile")
        bins = calibration.reliability_bins(conf, correct, n_bins)
        assert bins["accuracy"].to_numpy() == pytest.approx(prob_true)
        assert bins["confidence"].to_numpy() == pytest.approx(prob_pred)
        share = bins["n"] / bins["n"].sum()
        assert calibration.ece(conf, correct, n_bins) == pytest.approx(
            float(np.sum(share * np.abs(prob_true - prob_pred)))
        )


def test_brier_and_nll_by_hand_and_against_scikit_learn():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    y = np.array([0, 1])
    # (0.09 + 0.04 + 0.01 + 0.16 + 0.36 + 0.04) / 2
    assert calibration.brier(probs, y) == pytest.approx(0.35)
    assert calibration.nll(probs, y) == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2)
    rng = np.random.default_rng(2)
    p = rng.random(200)
    y2 = (rng.random(200) < p).astype(int)
    two = np.c_[1 - p, p]
    # the multi-class score sums both classes' squared errors: twice the binary score
    assert calibration.brier(two, y2) == pytest.approx(2 * brier_score_loss(y2, p))
    many = rng.dirichlet(np.ones(4), 300)
    y4 = rng.integers(0, 4, 300)
    assert calibration.brier(many, y4) == pytest.approx(
        brier_score_loss(y4, many, labels=[0, 1, 2, 3], scale_by_half=False)
    )
    assert calibration.nll(many, y4) == pytest.approx(log_loss(y4, many, labels=[0, 1, 2, 3]))


def test_a_zero_probability_on_the_truth_is_a_large_finite_penalty():
    value = calibration.nll(np.array([[1.0, 0.0]]), np.array([1]))
    assert np.isfinite(value) and value > 20


def test_temperature_scaling_recovers_a_planted_temperature_and_keeps_the_argmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (20000, 4))
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in true_p])
    overconfident = calibration.scale(true_p, 0.5)  # logits doubled
    t = calibration.fit_temperature(overconfident, y)
    assert t == pytest.approx(2.0, rel=0.05)
    fixed = calibration.scale(overconfident, t)
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert calibration.nll(fixed, y) < calibration.nll(overconfident, y)
    conf, correct = calibration.top_label(overconfident, y)
    conf_fixed, _ = calibration.top_label(fixed, y)
    assert calibration.ece(conf_fixed, correct) < calibration.ece(conf, correct) / 3
    assert calibration.scale(true_p, 1.0) == pytest.approx(true_p)


def test_aurc_oracle_and_random_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, False, True, False])
    # risks of the k kept: 0, 1/2, 1/3, 1/2
    assert calibration.aurc(conf, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    # correct ones first: 0, 0, 1/3, 1/2
    assert calibration.oracle_aurc(correct) == pytest.approx((1 / 3 + 1 / 2) / 4)
    assert calibration.random_aurc(correct) == 0.5


def test_tied_confidences_get_the_expected_risk_of_a_random_order_inside_the_tie():
    conf = np.array([0.9, 0.9, 0.5])
    correct = np.array([True, False, True])
    curve = calibration.risk_coverage(conf, correct)
    assert list(curve["risk"]) == pytest.approx([0.5, 0.5, 1 / 3])
    # the same with the tied pair listed the other way round
    swapped = correct[[1, 0, 2]]
    assert calibration.aurc(conf, swapped) == pytest.approx(calibration.aurc(conf, correct))
    # all tied: a random order, whose expected AURC is the error rate
    assert calibration.aurc(np.ones(3), correct) == pytest.approx(calibration.random_aurc(correct))


def test_oracle_method_random_order_on_planted_data():
    rng = np.random.default_rng(4)
    conf = rng.random(400)
    correct = rng.random(400) < conf  # informative, imperfect confidence
    method = calibration.aurc(conf, correct)
    assert calibration.oracle_aurc(correct) < method < calibration.random_aurc(correct)
    # an anti-informative confidence is worse than random
    assert calibration.aurc(-conf, correct) > calibration.random_aurc(correct)


def test_balanced_risk_and_coverage_at_risk_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array(["a", "a", "b", "b"])
    pred = np.array(["a", "b", "b", "b"])
    # kept 1: a 1/1; kept 2: a 1/2; kept 3: a 1/2, b 1/1; kept 4 the same
    risk = calibration.balanced_risk_curve(conf, y, pred)
    assert list(risk) == pytest.approx([0.0, 0.5, 0.25, 0.25])
    assert calibration.coverage_at_risk(conf, y, pred, 0.1) == 0.25
    assert calibration.coverage_at_risk(conf, y, pred, 0.25) == 1.0
    assert calibration.coverage_at_risk(conf, y, np.array(["b"] * 4), 0.1) == 0.0
    # a tie between the first two: coverage 1/4 is not reachable by itself
    tied = np.array([0.9, 0.9, 0.7, 0.6])
    assert calibration.coverage_at_risk(tied, y, pred, 0.1) == 0.0
