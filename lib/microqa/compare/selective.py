"""Selective prediction: how well each method's confidence orders its own answers.

For each method and task, the answers are kept most confident first (`calibration`'s
risk-coverage, ties as blocks in random order) under each confidence the study acts on:

- VLM (score mode): the **letter mass** it abstains on (its answer before abstention), and
  its top class probability;
- CLIP zero-shot and the probes: the **margin** between the two highest probabilities (the
  cascade's hand-off rule) and the top probability;
- fusion: its top probability;
- each cascade: the **hand-off ordering** — what its CLIP stage keeps, by the margin it
  handed the rest off on (prompt set chosen on the other fold, as the cascade ran it).

Every row carries the oracle AURC (correct answers first) and the random-order AURC (the
error rate) as its references, and the coverage at which the balanced error of the kept
answers is at most `MAX_BALANCED_RISK`. AURC and that coverage have 95% CIs from
specimen-clustered, class-stratified resamples (`stats.resamples`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd

from microqa import calibration, metrics, parallel, stats
from microqa.compare.calibration import task_truth
from microqa.compare.comparison import StudyComparison
from microqa.compare.hybrids import confidence
from microqa.compare.methods import Method, label
from microqa.data import taxonomy

MAX_BALANCED_RISK = 0.10
CURVE_POINTS = 200  # the curves table keeps at most this many coverages per curve


def orderings(method: Method) -> Iterator[tuple[str, pd.Series, pd.Series]]:
    """(confidence name, confidence, prediction it orders) for each rule the method has."""
    if method.kind == "vlm" and method.mode == "score" and "letter_mass" in method.notes:
        mass = method.notes["letter_mass"]
        if mass.notna().all():
            yield "letter mass (abstention)", mass, method.notes["choice"]
    if method.kind == "cascade" and method.notes.get("confidence") is not None:
        notes = method.notes
        yield "CLIP margin (cascade hand-off)", notes["confidence"], notes["base_prediction"]
        return
    if method.probabilities is None:
        return
    if method.kind in ("clip_zero_shot", "clip_probe"):
        yield "margin", confidence(method.probabilities, "margin"), method.predictions
    yield "top probability", confidence(method.probabilities, "top"), method.predictions


def _main_mode(method: Method) -> bool:
    return method.mode != "generate"


def selective_row(name, conf, pred, truth, groups, n_boot, seed, method: Method) -> dict:
    ids = truth.index.intersection(conf.index)
    y, c = truth.loc[ids].to_numpy(), conf.loc[ids].to_numpy(dtype=float)
    p = pred.loc[ids].to_numpy(dtype=object)
    correct = p == y
    row = {"task": method.task, **method.identity(), "label": label(method.identity())}
    row.update(confidence=name, n=len(ids), n_specimens=int(groups.loc[ids].nunique()))
    row["error_rate"] = float(1 - correct.mean())
    row["aurc"] = calibration.aurc(c, correct)
    row["oracle_aurc"] = calibration.oracle_aurc(correct)
    row["random_aurc"] = calibration.random_aurc(correct)
    row["coverage_at_risk"] = calibration.coverage_at_risk(c, y, p, MAX_BALANCED_RISK)
    samples = stats.resamples(y, groups.loc[ids].to_numpy(), n_boot=n_boot, seed=seed)
    aurcs = [calibration.aurc(c[i], correct[i]) for i in samples]
    # on integer codes (the truth's classes in the same order, the same hits: the same
    # floats) so that no resample sorts strings again
    codes = metrics.LabelCodes(y, metrics.clean_predictions(p))
    covered = [
        calibration.coverage_at_risk(c[i], codes.t[i], codes.p[i], MAX_BALANCED_RISK)
        for i in samples
    ]
    row["aurc_ci_low"], row["aurc_ci_high"] = stats.interval(aurcs)
    row["coverage_at_risk_ci_low"], row["coverage_at_risk_ci_high"] = stats.interval(covered)
    row["max_balanced_risk"], row["ci_level"] = MAX_BALANCED_RISK, stats.LEVEL
    return row


def selective_table(result: StudyComparison, df: pd.DataFrame, *, n_boot: int, seed: int = 0):
    """Per task, method and confidence rule: AURC against its oracle and random references,
    and the coverage at balanced error <= MAX_BALANCED_RISK, with clustered CIs."""
    groups = df.set_index("micrograph_no")["specimen_group"]
    pieces = []  # one row each, with its bootstrap: spread over processes
    for task in taxonomy.TASKS:
        truth = task_truth(df, task)
        for method in result.methods:
            if method.task == task and _main_mode(method):
                for name, conf, pred in orderings(method):
                    args = (name, conf, pred, truth, groups, n_boot, seed, method)
                    pieces.append(functools.partial(selective_row, *args))
    return pd.DataFrame(parallel.run(pieces))


def _thinned(curve: pd.DataFrame) -> pd.DataFrame:
    keep = np.unique(np.linspace(0, len(curve) - 1, min(len(curve), CURVE_POINTS)).astype(int))
    return curve.iloc[keep]


def curves_table(result: StudyComparison, df: pd.DataFrame) -> pd.DataFrame:
    """Risk-coverage curves (thinned to CURVE_POINTS): task, label, confidence, ordering
    (the method's, oracle, random), coverage, risk."""
    frames = []
    for task in taxonomy.TASKS:
        truth = task_truth(df, task)
        for method in result.methods:
            if method.task != task or not _main_mode(method):
                continue
            for name, conf, pred in orderings(method):
                ids = truth.index.intersection(conf.index)
                correct = (pred.loc[ids] == truth.loc[ids]).to_numpy()
                orders = {
                    "method": conf.loc[ids].to_numpy(dtype=float),
                    "oracle": correct.astype(float),
                    "random": np.zeros(len(ids)),  # one tie block: the expected random order
                }
                for ordering, score in orders.items():
                    curve = _thinned(calibration.risk_coverage(score, correct))
                    frames.append(
                        curve.assign(
                            task=task,
                            label=label(method.identity()),
                            confidence=name,
                            ordering=ordering,
                        )
                    )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
