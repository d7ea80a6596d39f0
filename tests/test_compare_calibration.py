"""compare.calibration, compare.selective, compare.per_class on planted methods whose
calibration, orderings and recalls are known."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from microqa import calibration, metrics, stats
from microqa.compare import calibration as study_calibration
from microqa.compare import methods, per_class, selective
from tests.test_comparison import CLASSES, _compare


def _planted_probs(n=4000, seed=0):
    """True probabilities, labels drawn from them, and folds alternating by image."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, len(CLASSES)))
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(len(CLASSES), p=row) for row in true_p])
    return true_p, y, np.tile([0, 1], n // 2)


def test_the_temperature_applied_to_a_fold_never_sees_that_folds_labels():
    probs, y, folds = _planted_probs()
    overconfident = calibration.scale(probs, 0.5)
    scaled, temps = study_calibration.cross_fitted_scaling(overconfident, y, folds)
    shuffled = y.copy()
    rng = np.random.default_rng(1)
    shuffled[folds == 1] = rng.permutation(shuffled[folds == 1])
    scaled_2, temps_2 = study_calibration.cross_fitted_scaling(overconfident, shuffled, folds)
    assert temps_2[1] == temps[1]  # fitted on fold 0, whose labels did not move
    assert scaled_2[folds == 1] == pytest.approx(scaled[folds == 1])
    assert temps_2[0] != pytest.approx(temps[0], rel=0.05)  # fitted on the shuffled fold
    assert temps[0] == pytest.approx(2.0, rel=0.1) and temps[1] == pytest.approx(2.0, rel=0.1)


def test_calibration_row_of_an_overconfident_method_improves_after_scaling():
    probs, y, folds = _planted_probs()
    ids = pd.RangeIndex(1, len(y) + 1)
    frame = pd.DataFrame(calibration.scale(probs, 0.5), index=ids, columns=list(CLASSES))
    method = methods.Method("clip_probe", "technique", "probe", methods.argmax(frame), frame)
    truth = pd.Series(np.array(CLASSES)[y], index=ids)
    groups = pd.Series((ids // 2).astype(str), index=ids)  # pairs of near-duplicates
    row = study_calibration.calibration_row(
        method, truth, pd.Series(folds, index=ids), groups, 100, 0
    )
    conf, correct = calibration.top_label(frame.to_numpy(), y)
    assert row["ece_before"] == pytest.approx(calibration.ece(conf, correct))
    assert row["mean_confidence"] > row["accuracy"] + 0.05  # overconfident by construction
    assert row["ece_after"] < row["ece_before"] / 2 and row["nll_after"] < row["nll_before"]
    assert row["ece_before_ci_low"] <= row["ece_before"] <= row["ece_before_ci_high"]
    assert row["ece_change_ci_high"] < 0
    assert row["n_specimens"] == len(set(groups))


def test_each_resamples_ece_and_brier_are_those_of_its_own_rows_to_the_last_bit():
    """The bootstrap gathers per-image confidences, hits and Brier terms computed once: every
    resample must score exactly as its rows scored afresh (== on the floats)."""
    probs, y, _ = _planted_probs(n=300, seed=3)
    probs = np.round(probs, 2)  # ties in confidence, so equal-mass bins share tied values
    probs /= probs.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(4)
    samples = [rng.integers(0, len(y), size) for size in (1, 2, 7, 150, 300, 300, 600)]
    scored = study_calibration._scores(probs, y, samples)
    for i, (ece, brier) in zip(samples, scored, strict=True):
        conf, correct = calibration.top_label(probs[i], y[i])
        assert ece == calibration.ece(conf, correct)
        assert brier == calibration.brier(probs[i], y[i])


def test_coverage_at_risk_on_class_codes_is_the_same_as_on_labels():
    """selective_row scores its resamples on integer codes of the labels: the same classes in
    the same order and the same hits, so the same floats, with predictions outside the truth's
    classes (None, an unknown label) and classes missing from a resample."""
    rng = np.random.default_rng(5)
    labels = np.array(["Metal", "Ceramic", "Polymer", "Composite"], dtype=object)
    y = labels[rng.integers(0, 4, 200)]
    pred = np.where(rng.random(200) < 0.6, y, labels[rng.integers(0, 4, 200)]).astype(object)
    pred[rng.random(200) < 0.1] = None
    pred[:3] = "Glass"
    conf = np.round(rng.random(200), 1)  # ties
    codes = metrics.LabelCodes(y, metrics.clean_predictions(pred))
    y_codes, p_codes = codes.t, codes.p
    for size in (5, 50, 200, 400):
        i = rng.integers(0, 200, size)
        i = i[y[i] != "Polymer"] if size == 50 else i  # a class absent from the resample
        on_labels = calibration.balanced_risk_curve(conf[i], y[i], pred[i])
        on_codes = calibration.balanced_risk_curve(conf[i], y_codes[i], p_codes[i])
        assert np.array_equal(on_codes, on_labels)  # the whole curve the coverage is read from
        for risk in (0.0, 0.1, 0.25, 0.5):
            expected = calibration.coverage_at_risk(conf[i], y[i], pred[i], risk)
            assert calibration.coverage_at_risk(conf[i], y_codes[i], p_codes[i], risk) == expected


def test_calibration_table_holds_every_probabilistic_method_and_both_baselines(
    tmp_path, monkeypatch
):
    df, _, _, result = _compare(tmp_path, monkeypatch)
    table = study_calibration.calibration_table(result, df, n_boot=20).set_index("kind")
    assert set(table.index) == {"clip_zero_shot", "vlm", "fusion", "majority", "chance"}
    assert (table["n"] == len(df)).all()
    assert table.loc["chance", "brier_before"] == pytest.approx(1 - 1 / 5)
    assert table.loc["chance", "nll_before"] == pytest.approx(np.log(5))
    assert np.isnan(table.loc["chance", "ece_before"])
    # the planted VLM says 0.7 for its answer and is right 92% of the time
    vlm = table.loc["vlm"]
    assert vlm["mean_confidence"] == pytest.approx(0.7)
    assert vlm["ece_before"] == pytest.approx(abs(vlm["accuracy"] - 0.7))
    bins = study_calibration.reliability_table(result, df)
    counts = bins.groupby(["label", "when"])["n"].sum()
    assert (counts == len(df)).all()


@pytest.mark.integration  # starts a pool of worker processes
def test_the_bootstrapped_tables_spread_over_processes_equal_the_serial_ones(tmp_path, monkeypatch):
    df, _, _, result = _compare(tmp_path, monkeypatch)
    tables = {}
    for jobs in ("1", "2"):
        monkeypatch.setenv("MICROQA_JOBS", jobs)
        tables[jobs] = [
            study_calibration.calibration_table(result, df, n_boot=20, seed=4),
            selective.selective_table(result, df, n_boot=20, seed=4),
        ]
    for serial, spread in zip(tables["1"], tables["2"], strict=True):
        assert len(serial) > 1
        pd.testing.assert_frame_equal(serial, spread, check_exact=True)


def test_the_cascade_on_raw_confidence_reproduces_the_comparisons_cascade(tmp_path, monkeypatch):
    df, _, _, result = _compare(tmp_path, monkeypatch)
    table = study_calibration.cascade_table(result, df, n_boot=20)
    assert len(table) == 1
    row = table.iloc[0]
    compared = result.table[result.table["kind"] == "cascade"].iloc[0]
    assert row["balanced_accuracy_before"] == pytest.approx(compared["balanced_accuracy"])
    assert row["fraction_to_vlm_before"] == pytest.approx(compared["fraction_to_vlm"])
    # CLIP's two confidence levels keep their order under any temperature: nothing changes
    assert row["images_answered_differently"] == 0 and not row["changes_cascade"]
    assert row["temperature_fold_0"] > 0 and row["temperature_fold_1"] > 0


def test_selective_orderings_against_their_references(tmp_path, monkeypatch):
    df, _, _, result = _compare(tmp_path, monkeypatch)
    table = selective.selective_table(result, df, n_boot=20).set_index(["kind", "confidence"])
    # the planted CLIP is right exactly when its margin is high: its ordering is the oracle's
    clip = table.loc[("clip_zero_shot", "margin")]
    assert clip["aurc"] == pytest.approx(clip["oracle_aurc"])
    assert clip["random_aurc"] == pytest.approx(clip["error_rate"]) and clip["aurc"] < 0.2
    # the planted VLM's letter mass is the same everywhere: no better than a random order
    vlm = table.loc[("vlm", "letter mass (abstention)")]
    assert vlm["aurc"] == pytest.approx(vlm["random_aurc"])
    assert (table["oracle_aurc"] <= table["aurc"] + 1e-12).all()
    assert (table["aurc_ci_low"] <= table["aurc"] + 1e-12).all()
    assert ("cascade", "CLIP margin (cascade hand-off)") in table.index
    curves = selective.curves_table(result, df)
    assert set(curves["ordering"]) == {"method", "oracle", "random"}


def test_per_class_recall_agrees_with_scikit_learn(tmp_path, monkeypatch):
    df, _, _, result = _compare(tmp_path, monkeypatch)
    table = per_class.per_class_table(result, df, n_boot=20)
    truth = df.set_index("micrograph_no")["technique_family"]
    for method in result.methods:
        rows = table[table["label"] == methods.label(method.identity())].set_index("class")
        pred = method.predictions.loc[truth.index].astype(object).fillna("none")
        expected = skm.recall_score(truth, pred, labels=list(rows.index), average=None)
        assert rows["recall"].to_numpy() == pytest.approx(expected)
    assert (table["recall_ci_low"] <= table["recall"] + 1e-12).all()
    assert (table["recall"] <= table["recall_ci_high"] + 1e-12).all()
    # each interval: the class's recall in every specimen resample, recomputed one by one
    groups = df.set_index("micrograph_no")["specimen_group"]
    method = result.methods[0]
    ids = truth.index.intersection(method.predictions.index)
    y = truth.loc[ids].to_numpy()
    right = y == method.predictions.loc[ids].to_numpy()
    samples = stats.resamples(y, groups.loc[ids].to_numpy(), n_boot=20, seed=0)
    rows = table[table["label"] == methods.label(method.identity())].set_index("class")
    for c, row in rows.iterrows():
        low, high = stats.interval([right[i][y[i] == c].mean() for i in samples])
        assert (row["recall_ci_low"], row["recall_ci_high"]) == (low, high)
    assert "majority" in set(table["kind"])
    assert (table["chance_recall"] == 1 / 5).all()


def test_figures_have_a_panel_per_method_and_a_cell_per_class_and_read_at_page_width(
    tmp_path, monkeypatch
):
    import matplotlib as mpl

    from microqa.compare import calibration_figures
    from microqa.report import plots
    from tests.figure_checks import unreadable

    mpl.rcParams.update(mpl.rcParamsDefault)  # undone below
    plots.set_style()  # as notebook 05 draws them
    df, _, _, result = _compare(tmp_path, monkeypatch)
    bins = study_calibration.reliability_table(result, df)
    title = "Calibration of every method [SAMPLE DATA; RANDOM WEIGHTS]"
    fig = calibration_figures.reliability_figure(bins, "technique", title)
    assert sum(ax.get_visible() for ax in fig.axes) == bins["label"].nunique()
    problems = {"reliability": unreadable(fig)}
    curves = selective.curves_table(result, df)
    fig = calibration_figures.risk_coverage_figure(curves, "technique", title)
    assert sum(ax.get_visible() for ax in fig.axes) == curves["label"].nunique()
    rules = curves.groupby("label")["confidence"].nunique()  # a line per rule in its panel
    assert [len(ax.get_lines()) for ax in fig.axes if ax.get_visible()] == list(
        rules.loc[list(dict.fromkeys(curves["label"]))] + 2
    )
    problems["risk-coverage"] = unreadable(fig)
    table = per_class.per_class_table(result, df, n_boot=10)
    fig = calibration_figures.per_class_figure(table, "technique", title)
    cells = [t for t in fig.axes[0].texts if "[" in t.get_text()]
    assert len(cells) == len(table)
    problems["per-class"] = unreadable(fig)
    plt.close("all")
    mpl.rcParams.update(mpl.rcParamsDefault)
    assert problems == {"reliability": [], "risk-coverage": [], "per-class": []}


def test_notebook_05_shows_one_tasks_confidence_figures_and_links_the_others():
    from microqa.compare import confidence

    names = [
        f"{kind}_{task}"
        for task in ("technique", "technique_coarse", "category")
        for kind in ("calibration_reliability", "selective_risk_coverage", "per_class")
    ]
    assert [n for n in names if confidence.shown(n)] == [
        f"{kind}_{confidence.SHOWN_TASK}"
        for kind in ("calibration_reliability", "selective_risk_coverage", "per_class")
    ]
    note = confidence.links_to_the_others(names)
    assert note.count("](figures/") == 6 and "[per_class_technique_coarse]" in note
    assert "_category]" not in note
    assert confidence.links_to_the_others(names[-3:]) == ""  # nothing hidden, nothing linked


def test_the_fold_counts_carry_no_substitute_stamp_the_model_tables_do():
    from microqa.compare import confidence

    assert confidence.substitutes_of("fold_counts", ["RANDOM WEIGHTS"]) == []
    for name in set(confidence.TITLES) - {"fold_counts"}:
        assert confidence.substitutes_of(name, ["RANDOM WEIGHTS"]) == ["RANDOM WEIGHTS"]
