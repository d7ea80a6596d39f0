"""Per-class recall of every method and task, with specimen-clustered CIs.

A class's recall is the share of its images the method answers with it (no answer counts as
wrong). Its 95% CI resamples specimens within class strata (`stats.resamples`), the same
resamples as every other interval; the majority baseline (chosen on the other fold) is a
column like any method, and each row states chance's expected recall, 1/k.
"""

from __future__ import annotations

import pandas as pd

from microqa import metrics, stats
from microqa.compare import baselines
from microqa.compare.calibration import task_truth
from microqa.compare.comparison import StudyComparison
from microqa.compare.methods import Method, label
from microqa.data import taxonomy


def recall_rows(
    method: Method, truth: pd.Series, groups: pd.Series, n_boot: int, seed: int
) -> list[dict]:
    """One row per class of the task present among the method's images."""
    ids = truth.index.intersection(method.predictions.index)
    y = truth.loc[ids].to_numpy()
    predicted = metrics.clean_predictions(list(method.predictions.loc[ids]))
    right = y == predicted
    g = groups.loc[ids].to_numpy()
    weights = metrics.sample_weights(stats.resamples(y, g, n_boot=n_boot, seed=seed), len(y))
    classes = [c for c in taxonomy.TASKS[method.task][1] if c in set(y)]
    # every class's recall in every resample at once; strata keep every class in every resample
    codes = metrics.LabelCodes(y, predicted)
    boot = codes.class_recalls_on_samples(weights)
    rows = []
    for c in classes:
        mine = y == c
        low, high = stats.interval(list(boot[:, codes.classes.index(c)]))
        rows.append(
            {
                "task": method.task,
                "class": c,
                **method.identity(),
                "label": label(method.identity()),
                "n": int(mine.sum()),
                "n_specimens": int(pd.Series(g[mine]).nunique()),
                "recall": float(right[mine].mean()),
                "recall_ci_low": low,
                "recall_ci_high": high,
                "chance_recall": taxonomy.chance(method.task),
                "ci_level": stats.LEVEL,
            }
        )
    return rows


def per_class_table(result: StudyComparison, df: pd.DataFrame, *, n_boot: int, seed: int = 0):
    """Per-class recall with clustered CIs, every method (main answer mode) and the majority
    baseline, per task."""
    groups = df.set_index("micrograph_no")["specimen_group"]
    rows = []
    for task in taxonomy.TASKS:
        truth = task_truth(df, task)
        found = [m for m in result.methods if m.task == task and m.mode != "generate"]
        if not found:
            continue
        found.append(baselines.majority(truth, result.folds, task))
        for method in found:
            rows += recall_rows(method, truth, groups, n_boot, seed)
    return pd.DataFrame(rows)
