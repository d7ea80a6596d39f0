"""One seaborn style for every figure, the helpers that write figures and tables, and the
generic figure helpers (wrapped tick labels, count heatmaps). A stage's own figures live in its
package (`clip.figures`, `compare.figures`) and are saved through `save_figure` here.

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
from microqa.run import Run  # noqa: E402

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
    run: Run,
    fig: plt.Figure,
    name: str,
    *,
    svg: bool = False,
    directory: Path | None = None,
    degraded: str = "",
    photo: bool = False,
) -> None:
    """Write `<name>.png` where `run`'s figures go (`Run.destination`), close the
    figure, and in a notebook display the file just written (so a notebook shows exactly what
    was saved). A `photo` (a micrograph gallery) is written as `<name>.jpg`: photographs
    compress far better as JPEG; `svg` adds `<name>.svg`. `degraded` names why this result is
    weaker than a published one (e.g. reference features absent): it then never replaces it.
    Returns nothing, so a notebook cell echoes no path."""
    target = run.destination
    directory = (
        directory
        or publishing.kept_published(
            target, "figures", f"{name}.{'jpg' if photo else 'png'}", degraded
        )
        or target.figures
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
    run: Run,
    df: pd.DataFrame,
    name: str,
    title: str = "",
    *,
    labels: Sequence[str] = (),
    float_format: str = ".3f",
    index: bool = False,
    directory: Path | None = None,
    degraded: str = "",
) -> None:
    """Write `<name>.csv` and `<name>.md` where `run`'s tables go, the Markdown headed by
    `title` stamped with the substitute `labels` (`provenance.stamp`); a `degraded` result never
    replaces a published one (see save_figure). Returns nothing."""
    caption = provenance.stamp(title, list(labels)) if title else ""
    target = run.destination
    directory = (
        directory
        or publishing.kept_published(target, "tables", f"{name}.csv", degraded)
        or target.tables
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
