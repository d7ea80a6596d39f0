"""One seaborn style for every figure, and the helpers that write figures and tables.

Every figure and table produced from offline substitutes carries the substitute in its
title/caption (see `provenance.stamp`), so a reader never mistakes it for the real study.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; notebooks still display them inline via IPython

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from microqa import config  # noqa: E402

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
    fig: plt.Figure, name: str, *, svg: bool = False, directory: Path | None = None
) -> Path:
    """Write `figures/<name>.png` (and `.svg`), close the figure, and, inside a notebook,
    display the file just written (so a notebook shows exactly what lands in figures/)."""
    directory = directory or config.figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{name}.png"
    fig.savefig(png, metadata={"Software": None})
    if svg:
        fig.savefig(directory / f"{name}.svg", metadata={"Date": None})
    plt.close(fig)
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(png)))
    return png


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
) -> Path:
    """Write `tables/<name>.csv` and `tables/<name>.md` (caption first); returns the CSV path."""
    directory = directory or config.tables_dir()
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{name}.csv"
    df.to_csv(csv_path, index=index)
    markdown = df.to_markdown(index=index, floatfmt=float_format)
    text = (f"{caption}\n\n" if caption else "") + markdown + "\n"
    (directory / f"{name}.md").write_text(text, encoding="utf-8")
    return csv_path
