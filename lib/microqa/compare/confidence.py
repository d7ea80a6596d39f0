"""Whether the study's confidences mean anything, in one place for notebook 05: calibration
(before and after cross-fitted temperature scaling), the cascade on calibrated confidence,
selective prediction (risk-coverage, AURC, coverage at a balanced risk), per-class recall and
the folds' class balance. Each table comes with the title it is published under; the figures
are drawn from those tables (`calibration_figures`)."""

from __future__ import annotations

import pandas as pd

from microqa.compare import calibration, calibration_figures, per_class, selective
from microqa.compare.comparison import StudyComparison
from microqa.data import splits

TITLES = {
    "calibration": "Calibration before and after cross-fitted temperature scaling "
    "(ECE with equal-mass bins, Brier, NLL; 95% CI by specimen)",
    "calibration_cascade": "The CLIP → VLM cascade on raw vs calibrated CLIP confidence "
    "(temperature and threshold chosen on the other fold)",
    "selective": "Selective prediction: AURC with oracle and random orderings, and the coverage "
    "at which balanced error is at most 10% (95% CI by specimen)",
    "per_class": "Per-class recall of every method (95% CI by specimen within class)",
    "fold_counts": "The two folds of specimens: images of each class in each fold",
}
MODEL_FREE = ("fold_counts",)  # data only: no substitute model's output to stamp


def substitutes_of(name: str, substitutes: list[str]) -> list[str]:
    """The substitute labels stamped on table `name`: none on a table no model wrote into."""
    return [] if name in MODEL_FREE else substitutes


def tables(result: StudyComparison, df: pd.DataFrame, *, n_boot: int, seed: int) -> dict:
    """name -> table, for every name of `TITLES` (plus the figures' long tables)."""
    options = {"n_boot": n_boot, "seed": seed}
    folds = splits.folds_of(df)
    return {
        "calibration": calibration.calibration_table(result, df, **options),
        "calibration_cascade": calibration.cascade_table(result, df, **options),
        "selective": selective.selective_table(result, df, **options),
        "per_class": per_class.per_class_table(result, df, **options),
        "fold_counts": pd.concat(
            [
                splits.fold_counts(df, folds, column)
                .rename(columns={column: "class"})
                .assign(column=column)
                for column in ("technique_family", "technique_coarse", "primary_category")
            ],
            ignore_index=True,
        ),
        "reliability_bins": calibration.reliability_table(result, df),
        "risk_coverage_curves": selective.curves_table(result, df),
    }


# The task whose figures the notebook shows; the other tasks' figures are saved and linked
# (three tasks' nine wall-sized figures would make the page too heavy to read or load).
SHOWN_TASK = "category"


def shown(name: str) -> bool:
    """Whether notebook 05 shows the figure `name` (of `figures`) or only links it."""
    return name.endswith(f"_{SHOWN_TASK}")


def links_to_the_others(names: list[str]) -> str:
    """A Markdown line linking the saved figures of `names` the notebook does not show."""
    others = [n for n in names if not shown(n)]
    if not others:
        return ""
    listed = ", ".join(f"[{n}](figures/{n}.png)" for n in others)
    return f"The same figures for the other tasks, saved beside these: {listed}."


def figures(tables: dict, stamp) -> list[tuple[str, object]]:
    """(name, figure) per task: reliability diagrams, risk-coverage curves, per-class recall.
    `stamp(title)` adds the substitute labels to each title."""
    drawn = []
    bins, curves, recall = (
        tables["reliability_bins"],
        tables["risk_coverage_curves"],
        tables["per_class"],
    )
    for task in dict.fromkeys(bins["task"]) if not bins.empty else ():
        drawn += [
            (
                f"calibration_reliability_{task}",
                calibration_figures.reliability_figure(bins, task, stamp(f"Reliability, {task}")),
            ),
            (
                f"selective_risk_coverage_{task}",
                calibration_figures.risk_coverage_figure(
                    curves, task, stamp(f"Risk–coverage, {task}")
                ),
            ),
            (
                f"per_class_{task}",
                calibration_figures.per_class_figure(
                    recall, task, stamp(f"Per-class recall, {task}")
                ),
            ),
        ]
    return drawn
