"""Robustness and shortcut controls: how answers move when the pixels change but the label does not.

Input is one tidy table of per-image predictions, one row per (method, task, variant, image):
columns ``method``, ``task``, ``variant`` (a name from `data.variants`), ``micrograph_no``,
``y_true``, ``y_pred`` (None/NaN: no answer) and the cluster column named by the caller
(the specimen key). Every comparison is paired on the same images and its interval resamples
the clusters within class strata (`stats.paired_comparison`); the cluster is a required argument.

- `robustness_table`: for each label-preserving transform, the change in balanced accuracy
  (variant − original, clustered CI) and the consistency rate (share of images whose answer does
  not change, clustered CI). Grayscale is its own group ("colour"), apart from the geometric
  transforms, because colour can itself be a shortcut; masking is the "annotation" group.
- `visual_gain`: original − blank per method and task, the no-image baseline's comparison.
- `study_tables`: both tables of the study's own runs (notebook 05): zero-shot CLIP on the
  robustness sample under each variant (`build/clip/robustness_scores.csv`, each image with the
  prompt set chosen for its fold on the other fold) and each VLM as the study asks it (no CLIP
  context, the study's wording, score mode; the forced choice, as the comparison's VLM rows)
  under each variant and with a blank image (`build/vlm/answers.csv`). The robustness rows are
  exploratory: Holm-corrected among themselves only. The visual gain is also a question of
  the primary family (`compare.family`), which is where its corrected p-value is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import stats
from microqa.clip import outputs as clip_outputs
from microqa.compare import answers, methods
from microqa.data import splits, taxonomy, variants
from microqa.vlm import outputs as vlm_outputs

GROUPS = {"hflip": "geometric", "rot90": "geometric", "gray": "colour", "masked": "annotation"}
KEY = ("method", "task")


def _paired(predictions: pd.DataFrame, variant: str, cluster: str) -> pd.DataFrame:
    """Original and `variant` answers side by side on the images both have (one method, task)."""
    original = predictions[predictions["variant"] == variants.ORIGINAL]
    other = predictions[predictions["variant"] == variant]
    for name, part in ((variants.ORIGINAL, original), (variant, other)):
        if part["micrograph_no"].duplicated().any():
            raise ValueError(f"variant {name!r} answers an image twice")
    joined = original.merge(
        other[["micrograph_no", "y_pred"]], on="micrograph_no", suffixes=("_original", "_variant")
    )
    if joined.empty:
        raise ValueError(f"no image has answers on both the original and variant {variant!r}")
    if joined[cluster].isna().any():
        raise ValueError(f"cluster column {cluster!r} has missing values")
    return joined


def _answers(values: pd.Series) -> np.ndarray:
    """Predictions as objects with every kind of missing answer as None (so equal means same)."""
    return np.array([None if pd.isna(v) else v for v in values], dtype=object)


def consistency(
    y_true, pred_a, pred_b, groups, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Share of images answered the same way (two non-answers agree) and its clustered CI."""
    same = _answers(pd.Series(pred_a)) == _answers(pd.Series(pred_b))
    samples = stats.resamples(np.asarray(y_true), np.asarray(groups), n_boot=n_boot, seed=seed)
    low, high = stats.interval([float(same[index].mean()) for index in samples])
    return {
        "consistency": float(same.mean()),
        "consistency_ci_low": low,
        "consistency_ci_high": high,
    }


def _compare(joined: pd.DataFrame, a: str, b: str, cluster: str, n_boot: int, seed: int) -> dict:
    y = joined["y_true"].to_numpy(dtype=object)
    pred_a, pred_b = _answers(joined[a]), _answers(joined[b])
    row = stats.paired_comparison(
        y, pred_a, pred_b, joined[cluster].to_numpy(), n_boot=n_boot, seed=seed
    )
    return row


def robustness_table(
    predictions: pd.DataFrame, *, cluster: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """One row per method, task and transform present: Δ balanced accuracy and consistency."""
    rows = []
    for (method, task), part in predictions.groupby(list(KEY), sort=True):
        for variant in variants.ROBUSTNESS_VARIANTS:
            if not (part["variant"] == variant).any():
                continue
            joined = _paired(part, variant, cluster)
            row = {"method": method, "task": task, "variant": variant, "group": GROUPS[variant]}
            row.update(_compare(joined, "y_pred_variant", "y_pred_original", cluster, n_boot, seed))
            y = joined["y_true"].to_numpy(dtype=object)
            row.update(
                consistency(
                    y,
                    joined["y_pred_original"],
                    joined["y_pred_variant"],
                    joined[cluster].to_numpy(),
                    n_boot=n_boot,
                    seed=seed,
                )
            )
            rows.append(row)
    return pd.DataFrame(rows)


def visual_gain(
    predictions: pd.DataFrame, *, cluster: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Original − blank (the no-image baseline) per method and task, paired and clustered."""
    rows = []
    for (method, task), part in predictions.groupby(list(KEY), sort=True):
        if not (part["variant"] == variants.BLANK).any():
            continue
        joined = _paired(part, variants.BLANK, cluster)
        row = {"method": method, "task": task, "comparison": "visual gain (original - blank)"}
        row.update(_compare(joined, "y_pred_original", "y_pred_variant", cluster, n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


# --- the study's own runs ------------------------------------------------------------------------

CLUSTER = "specimen_group"  # the unit every interval of the study resamples
PREDICTION_COLUMNS = [
    "method",
    "kind",
    "weights",
    "task",
    "variant",
    "micrograph_no",
    "y_true",
    "y_pred",
    CLUSTER,
]
ANSWER_COLUMNS = [c for c in PREDICTION_COLUMNS if c not in ("y_true", CLUSTER)]


@dataclass
class RobustnessStudy:
    predictions: pd.DataFrame  # PREDICTION_COLUMNS: the tidy table both tables are made from
    robustness: pd.DataFrame  # `robustness_table` + kind, weights, Holm within the table
    visual_gain: pd.DataFrame  # `visual_gain` + kind, weights


def _identity_label(**identity) -> str:
    return methods.label({**dict.fromkeys(methods.IDENTITY, ""), **identity})


def clip_predictions(scores: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot CLIP's answers per image and variant from robustness_scores.csv rows (the
    argmax of the cross-fitted probabilities)."""
    frames = []
    if scores.empty:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    for (model, weights, task, variant), group in scores.groupby(
        ["model", "weights", "task", "variant"], sort=True
    ):
        if task not in taxonomy.TASKS:
            continue
        predicted = methods.argmax(methods.pivot(group, taxonomy.TASKS[task][1]))
        name = _identity_label(kind="clip_zero_shot", model=str(model))
        frames.append(
            pd.DataFrame(
                {
                    "method": name,
                    "kind": "clip_zero_shot",
                    "weights": str(weights),
                    "task": task,
                    "variant": variant,
                    "micrograph_no": predicted.index.to_numpy(),
                    "y_pred": predicted.to_numpy(dtype=object),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def vlm_predictions(decided: pd.DataFrame) -> pd.DataFrame:
    """Each VLM's forced choice per image and variant, as the study asks it (no CLIP context,
    the study's wording, score mode: what the controls ask); `decided` from
    `answers.vlm_decisions` with every variant."""
    if decided.empty:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    asked = decided[
        (decided["context"] == "none")
        & (decided["prompt_set"] == "study")
        & (decided["mode"] == "score")
    ]
    name = {
        model: _identity_label(kind="vlm", model=str(model), context="none", mode="score")
        for model in asked["model"].unique()
    }
    return pd.DataFrame(
        {
            "method": asked["model"].map(name).to_numpy(),
            "kind": "vlm",
            "weights": asked["weights"].astype(str).to_numpy(),
            "task": asked["task"].to_numpy(),
            "variant": asked["variant"].to_numpy(),
            "micrograph_no": asked["micrograph_no"].astype(int).to_numpy(),
            "y_pred": asked["choice"].astype(object).to_numpy(),
        }
    )


def _with_truth(predictions: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows with their true class and specimen; each (method, task) keeps a
    variant's rows only on images its original answered (nothing to compare otherwise)."""
    if predictions.empty:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    by_id = records.set_index("micrograph_no")
    truth = pd.Series(
        [
            by_id.at[n, taxonomy.TASKS[t][0]] if n in by_id.index else None
            for n, t in zip(predictions["micrograph_no"], predictions["task"], strict=True)
        ],
        index=predictions.index,
        dtype=object,
    )
    classes = predictions["task"].map(lambda t: set(taxonomy.TASKS[t][1]))
    labelled = [y in c for y, c in zip(truth, classes, strict=True)]
    out = predictions.assign(y_true=truth)[labelled]
    out[CLUSTER] = out["micrograph_no"].map(by_id[CLUSTER])
    original = out[out["variant"] == variants.ORIGINAL]
    key = ["method", "task", "micrograph_no"]
    answered = set(original[key].itertuples(index=False, name=None))
    keep = [
        variant == variants.ORIGINAL or tuple(row) in answered
        for variant, row in zip(out["variant"], out[key].itertuples(index=False), strict=True)
    ]
    return out[keep][PREDICTION_COLUMNS].reset_index(drop=True)


def study_tables(
    records: pd.DataFrame,
    *,
    n_boot: int,
    seed: int = 0,
    paths: dict[str, Path] | None = None,
) -> RobustnessStudy:
    """The robustness and visual-gain tables of the run's outputs (module doc). `paths`:
    {"robustness": CLIP's robustness_scores.csv, "answers": the VLM's answers.csv}, by default
    the stages' own; a stage that has not run adds no rows."""
    paths = paths or {
        "robustness": clip_outputs.path("robustness"),
        "answers": vlm_outputs.answers_path(),
    }
    scores = pd.read_csv(paths["robustness"]) if paths["robustness"].is_file() else pd.DataFrame()
    folds = pd.Series(splits.folds_of(records).to_numpy(), index=records["micrograph_no"])
    every = (variants.ORIGINAL, variants.BLANK, *variants.ROBUSTNESS_VARIANTS)
    decided = answers.vlm_decisions(paths["answers"], folds, shown=every)
    tidy = _with_truth(
        pd.concat([clip_predictions(scores), vlm_predictions(decided)], ignore_index=True),
        records,
    )
    about = tidy.drop_duplicates(["method", "task"]).set_index(["method", "task"])
    about = about[["kind", "weights"]]
    options = {"cluster": CLUSTER, "n_boot": n_boot, "seed": seed}
    robust = _described(robustness_table(tidy, **options), about)
    return RobustnessStudy(
        predictions=tidy,
        robustness=stats.with_family(robust) if len(robust) else robust,
        visual_gain=_described(visual_gain(tidy, **options), about),
    )


def _described(table: pd.DataFrame, about: pd.DataFrame) -> pd.DataFrame:
    """`table` with each method's kind and weights beside its name (titles stamp the weights)."""
    if table.empty:
        return table
    return table.join(about, on=["method", "task"])


VIEW_COLUMNS = (
    "method",
    "weights",
    "task",
    "variant",
    "group",
    "comparison",
    "n",
    "n_specimens",
    "balanced_accuracy_difference",
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "consistency",
    "consistency_ci_low",
    "consistency_ci_high",
    "p_sign_flip_holm",
)


def view(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a notebook shows of `study_tables`' tables (the CSV keeps every column)."""
    return table[[c for c in VIEW_COLUMNS if c in table.columns]]
