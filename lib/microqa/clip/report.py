"""Tables and figures of the CLIP zero-shot stage. Models are named by `ModelIdentity.label`
(user-facing name plus weights identity), never by a path of the machine that ran them."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd

from microqa import metrics, provenance, stats
from microqa.clip.prompt_choice import (
    CROSS_FITTED,
    cross_fitted_predictions,
    labels,
    predictions,
)
from microqa.clip.zero_shot import ZeroShotRun
from microqa.data import images, taxonomy

CATEGORY_MULTI = "category_multi"
CATEGORY_MULTI_NAME = "category_multi (hit@1: prediction is one of the record's material classes)"
SUBSET = "all labelled"  # cross-fitting scores every labelled image once: no held-out half
SELECTION = {
    True: "cross-fitted: each fold's set chosen on the other fold (balanced accuracy)",
    False: "one fixed set on every image (no choice made; exploratory)",
}


def material_set(categories: Sequence[str]) -> set[str]:
    """The record's material classes for the multi-label hit view (not the single-label task).

    Every PRIMARY_CATEGORY named in the set, "Composite" for any composite tag (incl. composite
    foams), and "Ceramic" for "Oxide"; feature tags such as Fracture or Foam add nothing.
    """
    out = {c for c in categories if c in taxonomy.PRIMARY_CATEGORIES}
    if any("composite" in c.lower() for c in categories):
        out.add(taxonomy.COMPOSITE)
    if "Oxide" in categories:
        out.add(taxonomy.CERAMIC)
    return out


def _specimens(df: pd.DataFrame, ids) -> np.ndarray:
    """The specimen (the unit every interval here resamples) of each image in `ids`."""
    return df.set_index("micrograph_no").loc[list(ids), "specimen_group"].to_numpy()


def _candidates_and_cross_fitted(scores, df, folds, best) -> pd.DataFrame:
    """Every fixed prompt set's predictions and the cross-fitted ones (prompt_set
    CROSS_FITTED), with `selected` True on the cross-fitted rows: the published result."""
    fixed = predictions(scores).assign(selected=False)
    crossed = cross_fitted_predictions(scores, df, folds, best)
    return pd.concat([crossed.assign(selected=True), fixed], ignore_index=True)


def _chosen_sets(best: pd.DataFrame, model: str, task: str) -> str:
    rows = best[(best["model"] == model) & (best["task"] == task)]
    return "; ".join(f"fold {r.fold}: {r.prompt_set}" for r in rows.itertuples())


def zero_shot_table(
    scores: pd.DataFrame,
    df: pd.DataFrame,
    folds: pd.Series,
    best: pd.DataFrame,
    *,
    n_boot: int,
    seed: int = 0,
) -> pd.DataFrame:
    """model x task rows on every labelled image: the cross-fitted prompt set (`selected`;
    each fold scored with the set chosen on the other fold, `chosen_sets` names them), and
    each fixed prompt set (exploratory: no choice is made, so no image is scored on a choice
    made on it). Intervals resample specimens within class strata.

    `folds`: each record's fold of specimens, aligned with `df`; `best`: `choose_prompt_sets`."""
    rows = []
    every = _candidates_and_cross_fitted(scores, df, folds, best)
    for (model, weights, task, prompt_set, selected), h in every.groupby(
        ["model", "weights", "task", "prompt_set", "selected"], sort=False
    ):
        y = labels(df, task).loc[h["micrograph_no"]].to_numpy()
        row = stats.summarise(
            y,
            h["predicted"].tolist(),
            _specimens(df, h["micrograph_no"]),
            scores=np.stack(h["scores"]),
            classes=taxonomy.TASKS[task][1],
            n_boot=n_boot,
            seed=seed,
        )
        rows.append(
            {
                "model": model,
                "weights": weights,
                "task": task,
                "prompt_set": prompt_set,
                "subset": SUBSET,
                "selected": selected,
                "selection": SELECTION[selected],
                "chosen_sets": _chosen_sets(best, model, task) if selected else "",
                **row,
            }
        )
    return pd.DataFrame(rows)


def category_multi_table(
    scores: pd.DataFrame,
    df: pd.DataFrame,
    folds: pd.Series,
    best: pd.DataFrame,
    *,
    n_boot: int,
    seed: int = 0,
) -> pd.DataFrame:
    """The multi-label *hit* view: argmax of the category task counted as a hit when it is one of
    the record's material classes. A hit rate over overlapping classes, not an accuracy. Rows:
    the cross-fitted prompt set (`selected`) and each fixed set, on every labelled image."""
    by_id = df.set_index("micrograph_no")
    sets = by_id["category_set"].map(material_set)
    category = scores[scores["task"] == "category"]
    if category.empty:
        return pd.DataFrame()
    every = _candidates_and_cross_fitted(category, df, folds, best)
    rows = []
    for (model, weights, prompt_set, selected), h in every.groupby(
        ["model", "weights", "prompt_set", "selected"], sort=False
    ):
        hits = np.array(
            [p in sets.loc[m] for m, p in zip(h["micrograph_no"], h["predicted"], strict=True)]
        )
        # specimens resampled within primary-category strata, as every other CI here
        resampled = stats.resamples(
            by_id.loc[h["micrograph_no"], "primary_category"].astype(str).to_numpy(),
            by_id.loc[h["micrograph_no"], "specimen_group"].to_numpy(),
            n_boot=n_boot,
            seed=seed,
        )
        low, high = stats.interval([float(hits[i].mean()) for i in resampled])
        rows.append(
            {
                "model": model,
                "weights": weights,
                "task": CATEGORY_MULTI,
                "view": CATEGORY_MULTI_NAME,
                "prompt_set": prompt_set,
                "subset": SUBSET,
                "selected": selected,
                "n": len(hits),
                "hit_at_1": float(hits.mean()) if len(hits) else np.nan,
                "hit_at_1_ci_low": low,
                "hit_at_1_ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def per_class_tables(
    scores: pd.DataFrame, df: pd.DataFrame, folds: pd.Series, best: pd.DataFrame
) -> pd.DataFrame:
    """Per-class P/R/F1/n of each model's cross-fitted prompt sets, every labelled image."""
    crossed = cross_fitted_predictions(scores, df, folds, best)
    frames = []
    for (model, weights, task), g in crossed.groupby(["model", "weights", "task"], sort=False):
        y = labels(df, task).loc[g["micrograph_no"]].to_numpy()
        table = metrics.per_class_table(y, g["predicted"].tolist())
        frames.append(
            table.assign(
                model=model, weights=weights, task=task, prompt_set=CROSS_FITTED, subset=SUBSET
            )
        )
    if not frames:
        return pd.DataFrame()
    columns = ["model", "weights", "task", "prompt_set", "subset", "class"]
    return pd.concat(frames, ignore_index=True)[columns + ["precision", "recall", "f1", "n"]]


def confusion_figure(
    scores: pd.DataFrame,
    df: pd.DataFrame,
    folds: pd.Series,
    best: pd.DataFrame,
    model: str,
    title_labels: Sequence[str] = (),
    *,
    model_label: str | None = None,
):
    """Confusion matrices (rows: truth) of one model's cross-fitted prompt sets, every
    labelled image. `model_label`: how the title names the model (default: its name)."""
    import matplotlib.pyplot as plt

    from microqa import drawing

    crossed = cross_fitted_predictions(scores[scores["model"] == model], df, folds, best)
    tasks = list(dict.fromkeys(crossed["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 5.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        g = crossed[crossed["task"] == task]
        classes = list(taxonomy.TASKS[task][1])
        y = labels(df, task).loc[g["micrograph_no"]].to_numpy()
        matrix = metrics.confusion(y, g["predicted"].tolist(), classes)
        drawing.heatmap(matrix, ax, fmt="d", cmap="Blues")
        ax.set_title(f"{task} — {_chosen_sets(best, model, task)} (n={len(g)})", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        # class names on lines of 12 characters: true classes horizontal, predictions
        # vertical, so no two labels run into each other at page width
        ax.set_yticklabels([drawing.wrap(c, 12) for c in matrix.index])
        ax.set_xticklabels([drawing.wrap(c, 12) for c in matrix.columns], rotation=90)
    title = f"CLIP zero-shot confusion, {model_label or model}, cross-fitted prompt sets"
    fig.suptitle(provenance.stamp(title, list(title_labels)))
    fig.tight_layout()
    return fig


def status_table(run: ZeroShotRun) -> pd.DataFrame:
    """One row per requested model: weights used (and their identity), or why it was skipped."""
    rows = []
    for model, status in run.status.items():
        skipped = status.startswith("skipped:")
        rows.append(
            {
                "model": model,
                "weights": "skipped" if skipped else status,
                "loaded as": "" if skipped else run.label(model),
                "reason": status.removeprefix("skipped:") if skipped else "",
                "seconds_per_image": run.timing.get(model, {}).get("seconds_per_image"),
                "device": run.timing.get(model, {}).get("device"),
            }
        )
    return pd.DataFrame(rows)


def search_figure(results: pd.DataFrame, df: pd.DataFrame, title_labels: Sequence[str] = ()):
    """The retrieved images of a text query, best first, with their technique family."""
    import matplotlib.pyplot as plt

    width = 2.2 * len(results)  # inches: 10 pt captions still read 10+ px at page width
    fig, axes = plt.subplots(1, len(results), figsize=(width, 3.2), squeeze=False)
    records = df.set_index("micrograph_no")
    for ax, r in zip(axes[0], results.itertuples(), strict=True):
        ax.imshow(images.open_rgb(records.loc[r.micrograph_no, "image_path"]))
        ax.set_title(
            f"#{r.rank} {r.micrograph_no}\n{records.loc[r.micrograph_no, 'technique_family']}"
            f"\ncos {r.cosine:.3f}",
            fontsize=10,
        )
        ax.axis("off")
    query, model = results["query"].iloc[0], results["model_label"].iloc[0]
    title = provenance.stamp(f"Text->image search: '{query}' ({model})", list(title_labels))
    fig.suptitle(textwrap.fill(title, int(9 * max(width, 6.5))))  # ~9 title characters an inch
    fig.tight_layout()
    return fig


ZERO_SHOT_VIEW = [
    "model",
    "weights",
    "task",
    "prompt_set",
    "selected",
    "n",
    "accuracy",
    "balanced_accuracy",
    "top2_accuracy",
    "macro_f1",
    "accuracy_ci_low",
    "accuracy_ci_high",
]


def zero_shot_view(table: pd.DataFrame) -> pd.DataFrame:
    """The zero-shot table as notebook 03 shows it: the cross-fitted rows (every labelled image
    scored once with the prompt set chosen on the other fold), the columns read first."""
    return table.loc[table["selected"], ZERO_SHOT_VIEW + ["chosen_sets"]]
