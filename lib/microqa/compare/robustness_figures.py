"""The robustness figure: how balanced accuracy moves under each label-preserving transform."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from microqa.compare.robustness import GROUPS
from microqa.data import variants

TRANSFORM_NAMES = {
    "hflip": "horizontal flip",
    "rot90": "90° rotation",
    "gray": "grayscale (colour)",
    "masked": "annotations masked",
}


def robustness_figure(table: pd.DataFrame, title: str):
    """One panel per task: per method (rows), Δ balanced accuracy (variant − original) under
    each transform with its paired, specimen-clustered 95% CI; zero marks no change. Grayscale
    is drawn apart from the geometric transforms by its own marker (colour can be a shortcut)."""
    tasks = list(dict.fromkeys(table["task"]))
    shown = [v for v in variants.ROBUSTNESS_VARIANTS if (table["variant"] == v).any()]
    colours = dict(zip(shown, sns.color_palette("colorblind", len(shown)), strict=True))
    markers = {"geometric": "o", "colour": "s", "annotation": "D"}
    names = list(dict.fromkeys(table["method"]))
    height = 1.2 + 0.55 * len(names) * max(1, len(shown)) / 2
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(min(15, 5.2 * len(tasks)), height), squeeze=False, sharey=True
    )
    offsets = dict(zip(shown, np.linspace(-0.3, 0.3, len(shown)) if shown else [], strict=True))
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = table[table["task"] == task]
        for variant in shown:
            part = rows[rows["variant"] == variant]
            y = [names.index(m) + offsets[variant] for m in part["method"]]
            x = part["balanced_accuracy_difference"].to_numpy(dtype=float)
            low = x - part["balanced_accuracy_ci_low"].to_numpy(dtype=float)
            high = part["balanced_accuracy_ci_high"].to_numpy(dtype=float) - x
            ax.errorbar(
                x,
                y,
                xerr=[low, high],
                fmt=markers[GROUPS[variant]],
                color=colours[variant],
                capsize=3,
                label=TRANSFORM_NAMES.get(variant, variant),
            )
        ax.axvline(0, color="0.4", linewidth=1)
        ax.set_title(task)
        ax.set_xlabel("Δ balanced accuracy (transform − original)")
    axes[0, 0].set_yticks(range(len(names)), names)
    axes[0, 0].invert_yaxis()
    legend = {}  # each transform once, whichever panel drew it
    for ax in axes[0]:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.suptitle(title)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(shown)), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
