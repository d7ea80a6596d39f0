"""Drawing primitives every stage's figures share: an annotated heatmap and word-wrapped labels.

Why not seaborn's `heatmap`: it draws the whole figure once per call, to decide whether its tick
labels overlap, so a page of six confusion matrices drew its figure six times before saving. Here
the caller says how labels are wrapped and turned (the figures' text-overlap tests check the
result), and the figure is drawn once, when it is saved."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba_array

if TYPE_CHECKING:  # pyplot only for the annotation: importing it would pick a backend
    import matplotlib.pyplot as plt


def wrap(label: object, width: int = 14) -> str:
    """A label broken on word boundaries into lines of at most `width` characters."""
    return "\n".join(textwrap.wrap(str(label), width, break_long_words=False)) or str(label)


def _dark(rgba: np.ndarray) -> np.ndarray:
    """Whether each colour is dark enough for white text (WCAG relative luminance below 0.408,
    the threshold seaborn uses, so annotations keep the colours they had)."""
    rgb = rgba[:, :3]
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722]) <= 0.408


def heatmap(
    values: pd.DataFrame,
    ax: plt.Axes,
    *,
    annot: pd.DataFrame | np.ndarray | None = None,
    fmt: str = "d",
    cmap: str = "Blues",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str | None = None,
    linewidths: float = 0.0,
    linecolor: str = "white",
    fontsize: float | None = None,
):
    """`values` as coloured cells, rows top to bottom and columns left to right, ticked with
    the index and columns (horizontal; wrap or turn them afterwards). NaN cells stay blank.
    `annot`: the numbers written in the cells (default: `values`), dark text on light cells and
    white on dark; none where `values` is NaN. `colorbar_label`: a colour bar with that label
    (None: no colour bar). Returns the colour bar or None."""
    data = np.ma.masked_invalid(values.to_numpy(dtype=float))
    mesh = ax.pcolormesh(
        data, cmap=cmap, vmin=vmin, vmax=vmax, linewidth=linewidths, edgecolor=linecolor
    )
    n_rows, n_cols = data.shape
    ax.set(xlim=(0, n_cols), ylim=(n_rows, 0))  # first row at the top, as in the table
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(False)
    ax.set_xticks(np.arange(n_cols) + 0.5, [str(c) for c in values.columns], rotation=0)
    ax.set_yticks(np.arange(n_rows) + 0.5, [str(i) for i in values.index], rotation=0, va="center")
    ax.tick_params(length=0)
    ax.set_xlabel(values.columns.name or "")
    ax.set_ylabel(values.index.name or "")

    numbers = values.to_numpy() if annot is None else np.asarray(annot)
    colours = mesh.cmap(mesh.norm(data))
    dark = _dark(to_rgba_array(colours.reshape(-1, 4))).reshape(data.shape)
    text = {} if fontsize is None else {"fontsize": fontsize}
    for (row, col), value in np.ndenumerate(data.filled(np.nan)):
        if np.isnan(value):
            continue
        ax.text(
            col + 0.5,
            row + 0.5,
            format(numbers[row, col], fmt),
            ha="center",
            va="center",
            color="white" if dark[row, col] else "0.15",
            **text,
        )
    if colorbar_label is None:
        return None
    colorbar = ax.figure.colorbar(mesh, ax=ax, label=colorbar_label)
    colorbar.outline.set_linewidth(0)
    return colorbar
