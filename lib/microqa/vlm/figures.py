"""Figures of the VLM stage (notebook 04) drawn from its tables: accuracy with intervals per
model, question and context, and the confusion matrices of the decisions."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from microqa import drawing, metrics, provenance
from microqa.data import taxonomy


def accuracy_figure(table: pd.DataFrame, labels: Sequence[str]) -> plt.Figure:
    """Accuracy with 95% bootstrap CIs per model, task/prompt set and context."""
    data = table.assign(question=table["task"] + " / " + table["prompt_set"])
    questions_ = list(dict.fromkeys(data["question"]))
    fig, axes = plt.subplots(
        1, len(questions_), figsize=(4.2 * len(questions_), 3.8), sharey=True, squeeze=False
    )
    for ax, question in zip(axes[0], questions_, strict=True):
        part = data[data["question"] == question]
        sns.barplot(part, x="context", y="accuracy", hue="model", ax=ax, errorbar=None)
        for bar_group, (_, sub) in zip(
            ax.containers, part.groupby("model", sort=False), strict=False
        ):
            xs = [b.get_x() + b.get_width() / 2 for b in bar_group]
            ax.errorbar(
                xs,
                sub["accuracy"],
                yerr=[
                    sub["accuracy"] - sub["accuracy_ci_low"],
                    sub["accuracy_ci_high"] - sub["accuracy"],
                ],
                fmt="none",
                ecolor="black",
                capsize=3,
                lw=1,
            )
        ax.set_title(question)
        ax.set_ylim(0, 1)
        if ax is not axes[0][0] and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle(provenance.stamp("VLM accuracy (95% bootstrap CI)", labels))
    fig.tight_layout()
    return fig


def confusion_figure(
    answers: pd.DataFrame, task: str, prompt_set: str, labels: Sequence[str]
) -> plt.Figure:
    """Row-normalised confusion matrices, one panel per model x context; the true classes
    wrapped and horizontal, the answers vertical, so no label runs into its neighbour or the
    axis title."""
    classes = list(taxonomy.TASKS[task][1])
    part = answers[(answers["task"] == task) & (answers["prompt_set"] == prompt_set)]
    panels = list(part.groupby(["model", "context"], sort=False))
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 5.0 * rows), squeeze=False)
    for ax, ((model, context), group) in zip(axes.flat, panels, strict=False):
        counts = metrics.confusion(group["truth"].tolist(), group["prediction"].tolist(), classes)
        share = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
        drawing.heatmap(share, ax, annot=counts.to_numpy(), fmt="d", vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{model.split('/')[-1]}\ncontext: {context}", fontsize=10)
        ax.set_xlabel("prediction")
        ax.set_ylabel("truth")
        ax.set_yticklabels([drawing.wrap(c, 12) for c in share.index])
        ax.set_xticklabels([drawing.wrap(c, 12) for c in share.columns], rotation=90)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    title = provenance.stamp(f"VLM confusion: {task} ({prompt_set} prompts)", labels)
    fig.suptitle(textwrap.fill(title, int(9 * 4.6 * cols)))  # ~9 title characters an inch
    fig.tight_layout()
    return fig
