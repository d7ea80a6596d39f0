"""Figures of calibration, selective prediction and per-class recall, drawn from their tables
(`compare.calibration.reliability_table`, `compare.selective.curves_table`,
`compare.per_class.per_class_table`). Each returns the matplotlib figure; notebooks save it
with `report.plots.save_figure`."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from microqa.compare.methods import BASELINE_LABELS


def _grid(n: int, columns: int = 4, size: float = 3.0):
    """Panels for `n` methods, four a row: 12 in wide, so 8 pt text is still 11 px when a
    page shows the figure 1,200 px wide. Constrained layout keeps the title off the panels."""
    cols = min(columns, max(n, 1))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size * cols, size * rows + 0.8), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def reliability_figure(bins: pd.DataFrame, task: str, title: str):
    """One panel per method: accuracy against mean confidence per equal-mass bin, before and
    after cross-fitted temperature scaling, with the bins' image counts."""
    bins = bins[bins["task"] == task]
    labels = list(dict.fromkeys(bins["label"]))
    fig, axes = _grid(len(labels))
    for ax, name in zip(axes, labels, strict=False):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        for when, style in (("before", "o-"), ("after", "s--")):
            part = bins[(bins["label"] == name) & (bins["when"] == when)]
            ax.plot(part["confidence"], part["accuracy"], style, ms=4, label=when)
            if when == "before":  # counts once: the bins' sizes barely move with T
                _counts(ax, part)
        ax.set_title(_short(name), fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.05)
    axes[0].set_ylabel("accuracy in bin")
    axes[0].set_xlabel("mean confidence in bin")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    return fig


def risk_coverage_figure(curves: pd.DataFrame, task: str, title: str):
    """One panel per method: its risk-coverage curve under each confidence rule, with the
    oracle and the random ordering of the same answers as references (a rule reorders the
    answers, it does not change them, so both references are the method's)."""
    curves = curves[curves["task"] == task]
    labels = list(dict.fromkeys(curves["label"]))
    fig, axes = _grid(len(labels))
    for ax, name in zip(axes, labels, strict=False):
        part = curves[curves["label"] == name]
        rules = list(dict.fromkeys(part["confidence"]))
        for k, rule in enumerate(rules):
            line = part[(part["confidence"] == rule) & (part["ordering"] == "method")]
            ax.plot(line["coverage"], line["risk"], color=f"C{k}", label=f"by {rule}")
        for ordering, (color, ls) in {"oracle": ("C2", ":"), "random": ("0.5", "--")}.items():
            line = part[(part["confidence"] == rules[0]) & (part["ordering"] == ordering)]
            ax.plot(line["coverage"], line["risk"], color=color, ls=ls, label=ordering)
        ax.set_title(_short(name), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, max(0.05, float(part["risk"].max()) * 1.05))
        if len(rules) > 1 or ax is axes[0]:
            ax.legend(fontsize=8, loc="upper left")
    axes[0].set_xlabel("coverage (share answered)")
    axes[0].set_ylabel("risk (error among answered)")
    fig.suptitle(title)
    return fig


def per_class_figure(table: pd.DataFrame, task: str, title: str):
    """Classes as rows, methods as columns: recall as colour, with its value and 95% CI."""
    part = table[table["task"] == task]
    labels = list(dict.fromkeys(part["label"]))
    labels = [n for n in labels if n not in BASELINE_LABELS.values()] + [
        n for n in labels if n in BASELINE_LABELS.values()
    ]  # the baselines last, where a reader looks for them
    classes = list(dict.fromkeys(part["class"]))
    grid = part.pivot_table(index="class", columns="label", values="recall").loc[classes, labels]
    low = part.pivot_table(index="class", columns="label", values="recall_ci_low")
    high = part.pivot_table(index="class", columns="label", values="recall_ci_high")
    fig, ax = plt.subplots(figsize=(1.05 * len(labels) + 2.5, 0.75 * len(classes) + 2.8))
    ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, c in enumerate(classes):
        for j, name in enumerate(labels):
            value = grid.loc[c, name]
            if np.isnan(value):
                continue
            text = f"{value:.2f}\n[{low.loc[c, name]:.2f}, {high.loc[c, name]:.2f}]"
            colour = "black" if value > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_yticks(range(len(classes)), classes)
    # vertical, so a long (wrapped) method name stays within its own column
    ax.set_xticks(range(len(labels)), [_short(n, 28) for n in labels], rotation=90)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _counts(ax, part: pd.DataFrame) -> None:
    """The bins' image counts as one note in the corner: labels at every point collide where
    bins sit close together."""
    if part.empty:
        return
    low, high = int(part["n"].min()), int(part["n"].max())
    span = str(low) if low == high else f"{low}–{high}"
    ax.text(
        0.98,
        0.03,
        f"images per bin: {span}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
    )


def _short(label: str, width: int = 38) -> str:
    """A method's label on lines of at most `width` characters (wrapped, never cut)."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False)) or label
