"""The rows every other row is read against: chance and the majority class.

- **chance**: a guess uniform over the task's k options. Its row holds the *expected* metrics
  of that guess (the metrics of its expected confusion counts: each true image lands in each
  option 1/k of the time), so it carries no luck of one draw: accuracy and balanced accuracy
  1/k, macro precision the mean class share, top-2 accuracy 2/k. Its probabilities are 1/k
  for every option (Brier 1 - 1/k, NLL log k).
- **majority**: the most frequent class *of the other fold of specimens* for every image
  (cross-fitted like every other choice; ties go to the first class in taxonomy order), with
  the other fold's class shares as its probabilities (a prior that looks at no image).
  Balanced accuracy 1/(number of classes present) when both folds agree on the majority.

Both rows carry the comparison table's columns, with specimen-clustered, class-stratified
CIs from `stats.resamples` (the chance row's accuracy and balanced accuracy do not vary).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from microqa import stats
from microqa.compare.hybrids import cross_fit
from microqa.compare.methods import Method, label
from microqa.data import taxonomy


def chance(truth: pd.Series, task: str) -> Method:
    """The chance baseline: 1/k for each of the task's options, and no single guess (its
    predictions are None: its metrics are expectations, `chance_summary`)."""
    classes = list(taxonomy.TASKS[task][1])
    probs = pd.DataFrame(1.0 / len(classes), index=truth.index, columns=classes)
    return _baseline("chance", task, pd.Series(None, index=truth.index, dtype=object), probs)


def majority(truth: pd.Series, folds: pd.Series, task: str) -> Method:
    """The majority-class baseline, its class chosen on the other fold (module doc)."""
    classes = list(taxonomy.TASKS[task][1])

    def fit(train: pd.Series) -> tuple[dict, Method]:
        shares = train.value_counts(normalize=True).reindex(classes, fill_value=0.0)
        top = classes[int(np.argmax(shares.to_numpy()))]  # first of tied maxima
        probs = pd.DataFrame([shares.to_numpy()] * len(truth), index=truth.index, columns=classes)
        return {"class": top}, _baseline("majority", task, pd.Series(top, index=truth.index), probs)

    template = _baseline("majority", task, pd.Series(dtype=object), None)  # cross_fit fills it
    method, _ = cross_fit(truth, folds, fit, template)
    return method


def _baseline(kind: str, task: str, predictions: pd.Series, probs) -> Method:
    return Method(
        kind=kind, task=task, model="baseline", predictions=predictions.astype(object),
        probabilities=probs, weights="none",
    )  # fmt: skip


def chance_summary(
    y_true: np.ndarray, groups: np.ndarray, k: int, *, n_boot: int, seed: int
) -> dict[str, float | int]:
    """`stats.summarise`'s columns for the expected uniform guess over k options."""

    def expected(y: np.ndarray) -> dict[str, float]:
        shares = pd.Series(y).value_counts(normalize=True).to_numpy()
        # per true class c present: TP = n_c/k, predicted = n/k: precision = share, recall = 1/k
        f1 = 2 * shares / k / (shares + 1 / k)
        return {
            "accuracy": 1 / k,
            "balanced_accuracy": 1 / k,
            "macro_precision": float(shares.mean()),
            "macro_recall": 1 / k,
            "macro_f1": float(f1.mean()),
        }

    y = np.asarray(y_true)
    row: dict[str, float | int] = {"n": len(y), "n_specimens": int(pd.Series(groups).nunique())}
    row.update(expected(y))
    row["unanswered_rate"] = 0.0
    row["top2_accuracy"] = min(2, k) / k
    samples = [expected(y[i]) for i in stats.resamples(y, groups, n_boot=n_boot, seed=seed)]
    for name in stats.CI_METRICS:
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = stats.interval([s[name] for s in samples])
    row["ci_level"] = stats.LEVEL
    return row


def rows(
    truth: pd.Series,
    folds: pd.Series,
    groups: pd.Series,
    task: str,
    subset: str,
    n_boot: int,
    seed: int,
) -> list[dict]:
    """The chance and majority rows of the comparison table for one task and subset."""
    if truth.empty or folds.loc[truth.index].nunique() < 2:
        return []
    classes = list(taxonomy.TASKS[task][1])
    y, g = truth.to_numpy(), groups.loc[truth.index].to_numpy()
    guess = chance(truth, task)
    chance_row = chance_summary(y, g, len(classes), n_boot=n_boot, seed=seed)
    major = majority(truth, folds, task)
    major_row = stats.summarise(
        y,
        list(major.predictions.loc[truth.index]),
        g,
        scores=major.probabilities.loc[truth.index].to_numpy(),
        classes=classes,
        n_boot=n_boot,
        seed=seed,
    )
    out = []
    for method, summary in ((guess, chance_row), (major, major_row)):
        identity = method.identity()
        out.append(
            {
                "task": task,
                "subset": subset,
                **identity,
                "label": label(identity),
                **summary,
                "seconds_per_image": 0.0,
                "visual_tokens_per_image": None,
                "fraction_to_vlm": None,
            }
        )
    return out
