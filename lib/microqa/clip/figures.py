"""Figures of the CLIP stage drawn from its computed tables (the probes' learning curve)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from microqa import provenance


def learning_curve_figure(curve: pd.DataFrame, title_labels: Sequence[str] = ()):
    """Grouped-CV probe scores against labelled images per class (clip.probes.learning_curve)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for source, g in curve.groupby("features", sort=False):
        ax.errorbar(
            g["labels_per_class"],
            g["balanced_accuracy"],
            yerr=g["balanced_accuracy_sd"].fillna(0),
            marker="o",
            capsize=3,
            label=f"{source}: balanced acc.",
        )
        ax.plot(
            g["labels_per_class"],
            g["accuracy"],
            marker="s",
            linestyle="--",
            label=f"{source}: accuracy",
        )
    ax.set_xlabel("labelled images per class (training folds)")
    ax.set_ylabel("grouped-CV score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(
        provenance.stamp("Weak labelling: logreg probe vs labels per class", list(title_labels))
    )
    fig.tight_layout()
    return fig
