"""One seaborn style for every figure, the helpers that write figures and tables, and the
study's line figures drawn from computed tables (learning curve, cascade).

Every figure and table produced from offline substitutes carries the substitute in its
title/caption (see `provenance.stamp`), so a reader never mistakes it for the real study.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; notebooks still display them inline via IPython

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from microqa import provenance, publishing  # noqa: E402
from microqa.methods import in_main_mode  # noqa: E402

PALETTE = "colorblind"


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.titleweight": "bold",
            "svg.hashsalt": "microqa",  # stable SVG ids, so unchanged figures diff clean
        }
    )


def save_figure(
    fig: plt.Figure,
    name: str,
    *,
    svg: bool = False,
    directory: Path | None = None,
    degraded: str = "",
    photo: bool = False,
) -> None:
    """Write `<name>.png` where this run's figures go (`publishing.destination`), close the
    figure, and in a notebook display the file just written (so a notebook shows exactly what
    was saved). A `photo` (a micrograph gallery) is written as `<name>.jpg`: photographs
    compress far better as JPEG; `svg` adds `<name>.svg`. `degraded` names why this result is
    weaker than a published one (e.g. reference features absent): it then never replaces it.
    Returns nothing, so a notebook cell echoes no path."""
    directory = (
        directory
        or publishing.kept_published("figures", f"{name}.{'jpg' if photo else 'png'}", degraded)
        or publishing.destination().figures
    )
    directory.mkdir(parents=True, exist_ok=True)
    if photo:
        path = directory / f"{name}.jpg"
        fig.savefig(path, pil_kwargs={"quality": 85, "optimize": True})
    else:
        path = directory / f"{name}.png"
        fig.savefig(path, metadata={"Software": None})
    if svg:
        fig.savefig(directory / f"{name}.svg", metadata={"Date": None})
    plt.close(fig)
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(path)))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def save_table(
    df: pd.DataFrame,
    name: str,
    *,
    caption: str = "",
    float_format: str = ".3f",
    index: bool = False,
    directory: Path | None = None,
    degraded: str = "",
) -> None:
    """Write `<name>.csv` and `<name>.md` (caption first) where this run's tables go; a
    `degraded` result never replaces a published one (see save_figure). Returns nothing."""
    directory = (
        directory
        or publishing.kept_published("tables", f"{name}.csv", degraded)
        or publishing.destination().tables
    )
    directory.mkdir(parents=True, exist_ok=True)
    df.to_csv(directory / f"{name}.csv", index=index)
    markdown = df.to_markdown(index=index, floatfmt=float_format)
    text = (f"{caption}\n\n" if caption else "") + markdown + "\n"
    (directory / f"{name}.md").write_text(text, encoding="utf-8")


def wrap_tick_labels(
    ax: plt.Axes, *, width: int = 14, axis: str = "both", rotation: float | None = None
) -> None:
    """Wrap long class names on word boundaries (so "Metal or alloy" and "Ceramic" never run
    into each other) and optionally rotate them; call after the ticks exist."""
    for which in ("x", "y") if axis == "both" else (axis,):
        get = ax.get_xticklabels if which == "x" else ax.get_yticklabels
        set_ = ax.set_xticklabels if which == "x" else ax.set_yticklabels
        labels = [wrap(t.get_text(), width) for t in get()]
        if not any(labels):
            continue
        kwargs = {} if rotation is None else {"rotation": rotation}
        if which == "x" and rotation not in (None, 0, 90):
            kwargs["ha"] = "right"
            kwargs["rotation_mode"] = "anchor"
        set_(labels, **kwargs)


def wrap(label: str, width: int = 14) -> str:
    """A label broken on word boundaries into lines of at most `width` characters."""
    return "\n".join(textwrap.wrap(str(label), width, break_long_words=False)) or str(label)


def legend_outside(ax: plt.Axes, *, title: str | None = None, fontsize: int = 10) -> None:
    """The axes' legend to the right of the plot, at a readable size, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(
        handles,
        labels,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        title_fontsize=fontsize,
        frameon=False,
    )


def count_heatmap(
    table: pd.DataFrame, ax: plt.Axes, *, cmap: str = "mako_r", label: str = "records"
) -> None:
    """Counts on a LINEAR colour scale starting at 0, every cell annotated, colour bar ticks as
    whole numbers; zero cells left blank so empty combinations read as empty."""
    values = table.astype(float)
    vmax = max(1.0, float(values.to_numpy().max()))
    sns.heatmap(
        values.where(values > 0),
        annot=table.where(table > 0),
        fmt=".0f",
        cmap=cmap,
        vmin=0,
        vmax=vmax,
        cbar_kws={"label": label},
        ax=ax,
        linewidths=0.5,
        linecolor="0.85",
        annot_kws={"fontsize": 9},
    )
    colorbar = ax.collections[0].colorbar
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    ax.set_facecolor("white")
    ax.grid(False)


def learning_curve_figure(curve: pd.DataFrame, title_labels: Sequence[str] = ()):
    """Grouped-CV probe scores against labelled images per class (probes.learning_curve)."""
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


def cascade_figure(curves: pd.DataFrame, title: str):
    """Accuracy and balanced accuracy against the fraction of images sent to the VLM, for the
    study's main answer mode (the generate-mode agreement subset stays in the curves table);
    the legend below the panels."""
    if "mode" in curves:
        curves = curves[in_main_mode(curves["mode"])]
    tasks = list(dict.fromkeys(curves["task"]))
    n_lines = curves.groupby(["base", "vlm"]).ngroups
    columns = 1 if n_lines <= 3 else 2
    legend_height = 0.3 * -(-n_lines // columns) + 0.4  # inches: legend rows and a margin
    fig, axes = plt.subplots(
        2,
        len(tasks),
        figsize=(6 * len(tasks), 7 + legend_height),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for col, task in enumerate(tasks):
        for (base, vlm), curve in curves[curves["task"] == task].groupby(["base", "vlm"]):
            for row, metric in enumerate(("accuracy", "balanced_accuracy")):
                axes[row, col].plot(
                    curve["fraction_to_vlm"], curve[metric], label=f"{base} → {vlm}"
                )
        axes[0, col].set_title(task)
        axes[1, col].set_xlabel("fraction of images sent to the VLM (cost)")
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("balanced accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
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
