"""Figures of the comparison drawn from its computed tables (the cascade's cost curves)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from microqa.compare.methods import in_main_mode


def cascade_figure(curves: pd.DataFrame, title: str):
    """Accuracy and balanced accuracy against the fraction of images sent to the VLM, for the
    study's main answer mode (the generate-mode agreement subset stays in the curves table);
    the legend below the panels."""
    if "mode" in curves:
        curves = curves[in_main_mode(curves["mode"])]
    tasks = list(dict.fromkeys(curves["task"]))
    pairs = list(curves.groupby(["base", "vlm"]).groups)
    n_lines = len(pairs)
    # One colour per CLIP stage, one dash per VLM, set once for every panel (each panel's own
    # colour cycle would give a pair different colours in different panels and in the legend);
    # lines drawn first are wider, so a curve that coincides with a later one still shows.
    bases = list(dict.fromkeys(b for b, _ in pairs))
    vlms = list(dict.fromkeys(v for _, v in pairs))
    colours = dict(zip(bases, sns.color_palette("colorblind", len(bases)), strict=True))
    dashes = ["-", "--", ":", "-."]
    style = {
        (b, v): {
            "color": colours[b],
            "linestyle": dashes[vlms.index(v) % len(dashes)],
            "linewidth": 1.5 + 1.5 * (n_lines - 1 - i) / max(1, n_lines - 1),
        }
        for i, (b, v) in enumerate(pairs)
    }
    columns = 1 if n_lines <= 3 else 2
    legend_height = 0.3 * -(-n_lines // columns) + 0.4  # inches: legend rows and a margin
    fig, axes = plt.subplots(
        2,
        len(tasks),
        figsize=(min(15, 4.8 * len(tasks)), 7 + legend_height),  # fonts >= 10 px on the page
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for col, task in enumerate(tasks):
        for (base, vlm), curve in curves[curves["task"] == task].groupby(["base", "vlm"]):
            for row, metric in enumerate(("accuracy", "balanced_accuracy")):
                axes[row, col].plot(
                    curve["fraction_to_vlm"],
                    curve[metric],
                    label=f"{base} → {vlm}",
                    **style[(base, vlm)],
                )
        axes[0, col].set_title(task)
        axes[1, col].set_xlabel("fraction of images sent to the VLM (cost)")
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("balanced accuracy")
    handles = [plt.Line2D([], [], **style[pair]) for pair in pairs]
    labels = [f"{b} → {v}" for b, v in pairs]
    fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_height / (7 + legend_height), 1, 1))
    fig.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        fontsize=11,
        ncol=columns,
        frameon=False,
    )
    return fig
