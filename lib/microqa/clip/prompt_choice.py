"""The prompt-set choice of zero-shot CLIP, cross-fitted like every choice of the study.

The prompt set is chosen, so it is never scored on the images it was chosen on: each fold of
specimens is scored with the set chosen on the other fold (`choose_prompt_sets`), and every
labelled image is scored once (`cross_fitted_predictions`). The VLM's "CLIP top-k labels"
context applies the same per-fold choices (`apply_choices`). Free of torch: the VLM context
and the comparison import it on the OpenAI-compatible path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from microqa import metrics
from microqa.clip import outputs
from microqa.data import taxonomy

CROSS_FITTED = "cross-fitted"  # prompt_set of predictions made with each fold's own choice


def predictions(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per (model, task, prompt_set, image) with the argmax class and the
    probability matrix in the task's class order (ties: the earlier class)."""
    rows = []
    for (model, weights, task, prompt_set), g in scores.groupby(
        ["model", "weights", "task", "prompt_set"], sort=False
    ):
        classes = list(taxonomy.TASKS[task][1])
        wide = g.pivot(index="micrograph_no", columns="class", values="probability")[classes]
        matrix = wide.to_numpy()
        rows.append(
            pd.DataFrame(
                {
                    "model": model,
                    "weights": weights,
                    "task": task,
                    "prompt_set": prompt_set,
                    "micrograph_no": wide.index.to_numpy(),
                    "predicted": [classes[i] for i in matrix.argmax(axis=1)],
                    "scores": list(matrix),
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def labels(df: pd.DataFrame, task: str) -> pd.Series:
    """The records' true class for `task`, indexed by micrograph_no."""
    return df.set_index("micrograph_no")[taxonomy.TASKS[task][0]]


def ranking(truth: Sequence, predicted: Sequence) -> tuple[float, float]:
    """What every choice of the study ranks by: (balanced accuracy, accuracy)."""
    return metrics.balanced_accuracy(truth, predicted), metrics.accuracy(truth, predicted)


def pick_prompt_set(predicted: Mapping[str, Sequence], truth: Sequence) -> str:
    """THE prompt-set rule: the set whose predictions (aligned with `truth`) have the best
    (balanced accuracy, accuracy); ties go to the first set in name order."""
    names = sorted(predicted)
    return max(names, key=lambda n: (*ranking(truth, list(predicted[n])), -names.index(n)))


def fold_by_image(df: pd.DataFrame, folds: pd.Series | Sequence) -> pd.Series:
    """Each record's fold (`folds`, aligned with `df`), indexed by micrograph_no."""
    return pd.Series(np.asarray(folds), index=df["micrograph_no"].to_numpy(), name="fold")


def choose_prompt_sets(
    scores: pd.DataFrame, df: pd.DataFrame, folds: pd.Series | Sequence
) -> pd.DataFrame:
    """Cross-fitted prompt-set choice: for every (model, task) and fold of specimens, the set
    `pick_prompt_set` chooses on the labelled images of the OTHER folds, to be applied to this
    fold. A fold is never decided on its own labels, so every labelled image can be scored once.

    `folds`: each record's fold, aligned with `df` (`dataset.selection_split` or
    `splits.assign_folds`). Only images every prompt set scored take part. A fold with no
    other fold to choose on gets no row (its images get no cross-fitted prediction).
    Columns: outputs.BEST_COLUMNS + n_chosen_on, chosen_on_balanced_accuracy."""
    fold_of = fold_by_image(df, folds)
    rows = []
    for (model, task), g in predictions(scores).groupby(["model", "task"], sort=False):
        wide = g.pivot(index="micrograph_no", columns="prompt_set", values="predicted").dropna()
        truth = labels(df, task).loc[wide.index]
        fold = fold_of.loc[wide.index]
        for held_out in sorted(fold.unique(), key=str):
            other = wide.index[(fold != held_out).to_numpy()]
            if not len(other):
                continue
            chosen = pick_prompt_set(wide.loc[other].to_dict("series"), truth.loc[other])
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "fold": held_out,
                    "prompt_set": chosen,
                    "n_chosen_on": len(other),
                    "chosen_on_balanced_accuracy": ranking(
                        truth.loc[other], list(wide.loc[other, chosen])
                    )[0],
                }
            )
    columns = [*outputs.BEST_COLUMNS, "n_chosen_on", "chosen_on_balanced_accuracy"]
    return pd.DataFrame(rows, columns=columns)


def apply_choices(scores: pd.DataFrame, best: pd.DataFrame, fold_of: pd.Series) -> pd.DataFrame:
    """The score rows of each image under the prompt set chosen for its fold (`best`, from
    `choose_prompt_sets`; `fold_of`: fold by micrograph_no), with `prompt_set` CROSS_FITTED and
    the set used in `chosen_prompt_set`. Images whose fold has no choice are left out."""
    fold = scores["micrograph_no"].map(fold_of).astype(str)  # folds read back from CSV: text
    chosen = best[["model", "task", "fold", "prompt_set"]].rename(
        columns={"prompt_set": "chosen_prompt_set"}
    )
    merged = scores.assign(fold=fold).merge(
        chosen.assign(fold=chosen["fold"].astype(str)), on=["model", "task", "fold"]
    )
    merged = merged[merged["prompt_set"] == merged["chosen_prompt_set"]]
    return merged.assign(prompt_set=CROSS_FITTED).drop(columns="fold").reset_index(drop=True)


def cross_fitted_predictions(
    scores: pd.DataFrame, df: pd.DataFrame, folds: pd.Series | Sequence, best: pd.DataFrame
) -> pd.DataFrame:
    """`predictions` of every labelled image under the prompt set chosen on the other fold
    (prompt_set CROSS_FITTED), with the set used per image in `chosen_prompt_set`."""
    applied = apply_choices(scores, best, fold_by_image(df, folds))
    if applied.empty:
        return pd.DataFrame()
    pred = predictions(applied)
    used = applied.drop_duplicates(["model", "weights", "task", "micrograph_no"])
    return pred.merge(
        used[["model", "weights", "task", "micrograph_no", "chosen_prompt_set"]],
        on=["model", "weights", "task", "micrograph_no"],
    )
