"""Calibration of every probability the study uses, before and after temperature scaling.

Reads the comparison's evaluated methods (`StudyComparison.methods`: CLIP zero-shot with
class probabilities from the logit scale, the probes' out-of-fold probabilities, the VLMs'
rotation-averaged class probabilities in score mode, fusion), plus the majority and chance
baselines. Formulas: `microqa.calibration`.

- **Cross-fitted temperature**: the temperature applied to a fold is fitted (minimum NLL) on
  the other fold of specimens only; the folds' scaled probabilities are pooled, so every image
  is scored once by a temperature that never saw its label.
- **Intervals**: ECE and Brier before and after, and the change in ECE, each with a 95% CI
  from the same specimen-clustered, class-stratified resamples (`stats.resamples`).
- **The cascade on calibrated confidence** (`cascade_table`): the cascade re-run with its CLIP
  stage's probabilities temperature-scaled (temperature and threshold both chosen on the
  other fold), against the same cascade on raw probabilities: balanced accuracy of each (paired
  clustered CI of the difference), the share sent to the VLM, and the AURC of the hand-off
  ordering (CLIP keeps its most confident images) before and after.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pandas as pd

from microqa import calibration, metrics, parallel, stats
from microqa.compare import baselines
from microqa.compare.answers import hybrid_partners
from microqa.compare.comparison import StudyComparison
from microqa.compare.hybrids import apply_cascade, cascade_curve, choose_threshold, cross_fit
from microqa.compare.methods import Method, label
from microqa.data import taxonomy


def task_truth(df: pd.DataFrame, task: str) -> pd.Series:
    """The task's labelled images: true class by micrograph_no."""
    column, classes = taxonomy.TASKS[task]
    records = df.set_index("micrograph_no")
    return records.loc[records[column].isin(classes), column]


def probabilistic_methods(result: StudyComparison, df: pd.DataFrame, task: str) -> list[Method]:
    """The task's methods that state class probabilities (main answer mode), then the majority
    and chance baselines on the same labelled images."""
    truth = task_truth(df, task)
    # generate-mode answers carry no probabilities: only the main (score) mode is here
    found = [m for m in result.methods if m.task == task and m.probabilities is not None]
    if not found:
        return []
    return [*found, baselines.majority(truth, result.folds, task), baselines.chance(truth, task)]


def _arrays(method: Method, truth: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    ids = truth.index.intersection(method.probabilities.index)
    classes = list(method.probabilities.columns)
    y = np.array([classes.index(c) for c in truth.loc[ids]])
    return ids, method.probabilities.loc[ids].to_numpy(dtype=float), y


def cross_fitted_scaling(
    probs: np.ndarray, y: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, dict[int, float]]:
    """Probabilities of each fold scaled by the temperature fitted on the other folds' labels
    only, and that temperature per held-out fold."""
    scaled = np.empty_like(probs)
    temperatures = {}
    for fold in sorted(set(folds)):
        held = folds == fold
        t = calibration.fit_temperature(probs[~held], y[~held])
        scaled[held] = calibration.scale(probs[held], t)
        temperatures[int(fold)] = t
    return scaled, temperatures


def _scores(probs: np.ndarray, y: np.ndarray, samples) -> np.ndarray:
    """(ECE, Brier) of each sample of image indices. Each image's confidence, hit and Brier
    term are computed once and gathered per sample: the same floats as scoring a sample's rows
    afresh (a row's terms do not depend on the other rows)."""
    conf, correct = calibration.top_label(probs, y)
    terms = calibration.brier_terms(probs, y)
    return np.array(
        [(calibration.ece(conf[i], correct[i]), float(np.mean(terms[i]))) for i in samples]
    )


def calibration_row(
    method: Method, truth: pd.Series, folds: pd.Series, groups: pd.Series, n_boot: int, seed: int
) -> dict:
    """One method's calibration before and after cross-fitted temperature scaling."""
    ids, probs, y = _arrays(method, truth)
    # the chance baseline has no top class (all tied at 1/k, which no temperature moves):
    # its accuracy is the expected 1/k, and it has no ECE and no temperature
    chance = method.kind == "chance"
    fold = folds.loc[ids].to_numpy()
    scaled, temperatures = (probs, {}) if chance else cross_fitted_scaling(probs, y, fold)
    whole = np.arange(len(ids))
    row: dict = {"task": method.task, **method.identity(), "label": label(method.identity())}
    row["n"], row["n_specimens"] = len(ids), int(groups.loc[ids].nunique())
    conf, correct = calibration.top_label(probs, y)
    row["accuracy"] = 1 / probs.shape[1] if chance else float(correct.mean())
    row["mean_confidence"] = float(conf.mean())
    samples = stats.resamples(
        truth.loc[ids].to_numpy(), groups.loc[ids].to_numpy(), n_boot=n_boot, seed=seed
    )
    boot = {}  # (ECE, Brier) of every bootstrap sample, before and after scaling
    for when, p in (("before", probs), ("after", scaled)):
        (ece, brier), *boot_scores = _scores(p, y, [whole, *samples])
        row[f"ece_{when}"] = np.nan if chance else float(ece)
        row[f"brier_{when}"] = float(brier)
        row[f"nll_{when}"] = calibration.nll(p, y)
        boot[when] = np.array(boot_scores)
        if not chance:
            ece_low_high = stats.interval(boot[when][:, 0])
            row[f"ece_{when}_ci_low"], row[f"ece_{when}_ci_high"] = ece_low_high
        brier_low_high = stats.interval(boot[when][:, 1])
        row[f"brier_{when}_ci_low"], row[f"brier_{when}_ci_high"] = brier_low_high
    row["mean_confidence_after"] = float(calibration.top_label(scaled, y)[0].mean())
    if not chance:
        change = list(boot["after"][:, 0] - boot["before"][:, 0])  # paired: the same samples
        row["ece_change"] = row["ece_after"] - row["ece_before"]
        row["ece_change_ci_low"], row["ece_change_ci_high"] = stats.interval(change)
    for fold_id, t in temperatures.items():
        row[f"temperature_fold_{fold_id}"] = t  # applied to this fold, fitted on the other
    row["n_bins"], row["ci_level"] = calibration.N_BINS, stats.LEVEL
    return row


def calibration_table(result: StudyComparison, df: pd.DataFrame, *, n_boot: int, seed: int = 0):
    """Every probabilistic method and baseline, per task: ECE (equal-mass bins), Brier, NLL,
    before and after cross-fitted temperature scaling, with clustered CIs."""
    groups = df.set_index("micrograph_no")["specimen_group"]
    pieces = []  # one row each, with its bootstrap: spread over processes
    for task in taxonomy.TASKS:
        truth = task_truth(df, task)
        for method in probabilistic_methods(result, df, task):
            args = (method, truth, result.folds, groups, n_boot, seed)
            pieces.append(functools.partial(calibration_row, *args))
    return pd.DataFrame(parallel.run(pieces))


def reliability_table(result: StudyComparison, df: pd.DataFrame) -> pd.DataFrame:
    """Reliability-diagram bins (equal mass) of every probabilistic method, before and after
    cross-fitted temperature scaling: task, label, when, bin, n, confidence, accuracy."""
    frames = []
    for task in taxonomy.TASKS:
        truth = task_truth(df, task)
        for method in probabilistic_methods(result, df, task):
            if method.kind == "chance":
                continue  # every image tied at 1/k: one point, no diagram
            ids, probs, y = _arrays(method, truth)
            scaled, _ = cross_fitted_scaling(probs, y, result.folds.loc[ids].to_numpy())
            for when, p in (("before", probs), ("after", scaled)):
                bins = calibration.reliability_bins(*calibration.top_label(p, y))
                frames.append(bins.assign(task=task, label=label(method.identity()), when=when))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- the cascade on calibrated confidence ---------------------------------------------------


def _stage_and_partner(cascade: Method, methods: list[Method]) -> tuple[Method, Method] | None:
    """The pooled CLIP stage and the VLM a cascade was made with (found by identity)."""
    same_task = [m for m in methods if m.task == cascade.task]
    stage = [
        m
        for m in same_task
        if (m.kind, m.model, m.prompt_set) == (cascade.base, cascade.model, cascade.prompt_set)
    ]
    vlms = [m for m in same_task if m.kind == "vlm"]
    partner = [
        v
        for v in hybrid_partners(vlms)
        if (v.model, v.context, v.mode) == (cascade.partner, cascade.context, cascade.mode)
    ]
    return (stage[0], partner[0]) if stage and partner else None


def _cascade(stage: Method, vlm: Method, truth: pd.Series, folds: pd.Series, calibrated: bool):
    """The cascade cross-fitted on `truth`: threshold (and temperature) from the other fold."""
    classes = list(stage.probabilities.columns)

    def fit(train: pd.Series):
        base, choice = stage, {}
        if calibrated:
            y = np.array([classes.index(c) for c in train])
            t = calibration.fit_temperature(stage.probabilities.loc[train.index].to_numpy(), y)
            scaled = calibration.scale(stage.probabilities.to_numpy(), t)
            frame = pd.DataFrame(scaled, index=stage.probabilities.index, columns=classes)
            base = replace(stage, probabilities=frame)
            choice = {"temperature": t}
        threshold = choose_threshold(cascade_curve(base, vlm, train))
        return {**choice, "threshold": threshold}, apply_cascade(base, vlm, threshold)

    template = replace(stage, kind="cascade", predictions=pd.Series(dtype=object))
    return cross_fit(truth, folds, fit, template)


def cascade_table(result: StudyComparison, df: pd.DataFrame, *, n_boot: int, seed: int = 0):
    """Does calibrated confidence change the cascade? One row per cascade (main mode)."""
    groups = df.set_index("micrograph_no")["specimen_group"]
    rows = []
    for cascade in result.methods:
        if cascade.kind != "cascade" or cascade.mode == "generate":
            continue
        found = _stage_and_partner(cascade, result.methods)
        if found is None:
            continue
        stage, vlm = found
        truth = task_truth(df, cascade.task)
        ids = truth.index.intersection(stage.predictions.index).intersection(vlm.predictions.index)
        truth = truth.loc[ids]
        stage = stage.restricted(ids)
        before, _ = _cascade(stage, vlm, truth, result.folds, calibrated=False)
        after, choices = _cascade(stage, vlm, truth, result.folds, calibrated=True)
        paired = stats.paired_comparison(
            truth.to_numpy(),
            list(after.predictions.loc[ids]),
            list(before.predictions.loc[ids]),
            groups.loc[ids].to_numpy(),
            n_boot=n_boot,
            seed=seed,
        )
        correct = (stage.predictions.loc[ids] == truth).to_numpy()
        row = {"task": cascade.task, "label": label(cascade.identity()), "n": len(ids)}
        row["n_specimens"] = paired["n_specimens"]
        for when, method in (("before", before), ("after", after)):
            pred = list(method.predictions.loc[ids])
            row[f"balanced_accuracy_{when}"] = metrics.balanced_accuracy(truth, pred)
            row[f"fraction_to_vlm_{when}"] = method.notes["fraction_to_vlm"]
            row[f"handoff_aurc_{when}"] = calibration.aurc(
                method.notes["confidence"].loc[ids].to_numpy(), correct
            )
        row["balanced_accuracy_change"] = paired["balanced_accuracy_difference"]
        row["balanced_accuracy_change_ci_low"] = paired["balanced_accuracy_ci_low"]
        row["balanced_accuracy_change_ci_high"] = paired["balanced_accuracy_ci_high"]
        row["p_sign_flip"] = paired["p_sign_flip"]
        row["images_answered_differently"] = int(
            (after.predictions.loc[ids] != before.predictions.loc[ids]).sum()
        )
        row["changes_cascade"] = row["images_answered_differently"] > 0
        for c in choices:
            row[f"temperature_fold_{c['held_out_fold']}"] = c["temperature"]
        row["ci_level"] = stats.LEVEL
        rows.append(row)
    return pd.DataFrame(rows)
