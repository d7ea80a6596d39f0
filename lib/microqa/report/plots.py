"""One seaborn style for every figure, the helpers that write figures and tables, and the
generic figure helpers (wrapped tick labels, count heatmaps; the heatmap and word wrapping
themselves are `microqa.drawing`, which every stage shares). A stage's own figures live in its
package (`clip.figures`, `compare.figures`) and are saved through `save_figure` here.

Every figure and table produced from offline substitutes carries the substitute in its
title/caption (see `provenance.stamp`), so a reader never mistakes it for the real study.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; notebooks still display them inline via IPython

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from microqa import drawing, provenance, publishing  # noqa: E402
from microqa.run import Run  # noqa: E402

PALETTE = "colorblind"
PAGE_PX = 1200  # CSS px a rendered page shows a figure at, at most (report.site's stylesheet)
MIN_FONT_PX = 10  # the smallest text a figure may show at that width
SAVE_DPI = 150


def shown_scale(fig: plt.Figure) -> float:
    """How much a saved figure is scaled down when a page shows it (1: shown pixel for pixel;
    a figure saved wider than PAGE_PX is shrunk to it, and its text with it)."""
    width_px = fig.get_figwidth() * SAVE_DPI
    return min(1.0, PAGE_PX / width_px)


def shown_font_px(fig: plt.Figure, points: float) -> float:
    """The height in page px of `points`-point text of `fig` once saved and shown."""
    return points * SAVE_DPI / 72 * shown_scale(fig)


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": SAVE_DPI,
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
    alt: str = "",
    show: bool = True,
) -> None:
    """Write `<name>.png` where `run`'s figures go (`Run.destination`), close the
    figure, and in a notebook display the file just written (so a notebook shows exactly what
    was saved). A `photo` (a micrograph gallery) is written as `<name>.jpg`: photographs
    compress far better as JPEG; `svg` adds `<name>.svg`. `degraded` names why this result is
    weaker than a published one (e.g. reference features absent): it then never replaces it.
    `alt` says what the figure shows for a reader who cannot see it (the rendered page's alt
    text); by default it is built from the figure's titles and axis labels. `show=False` saves
    without displaying (a page that says in words why the figure is not worth showing).
    Returns nothing, so a notebook cell echoes no path."""
    alt = alt or alt_text(fig)
    path = _figure_path(run, name, directory, degraded, photo)
    if photo:
        fig.savefig(path, pil_kwargs={"quality": 85, "optimize": True})
    else:
        fig.savefig(path, metadata=PNG_METADATA)
    if svg:
        fig.savefig(path.with_suffix(".svg"), metadata={"Date": None})
    plt.close(fig)
    if show:
        _display(path, alt)


PNG_METADATA = {"Software": None}  # no matplotlib version in the file: unchanged figures diff clean


def save_figures(run: Run, figures: Sequence[tuple[str, plt.Figure]], *, shown=None) -> None:
    """`save_figure` for each (name, figure) as a PNG, the files drawn side by side in worker
    processes (`microqa.parallel`: matplotlib draws on one core, and a wall of panels takes
    seconds), then displayed in order where `shown(name)` (None: all). Each file holds the
    bytes `save_figure` writes (tested): the figure travels pickled, and is drawn under this
    process's style settings."""
    from microqa import parallel

    style = {k: v for k, v in plt.rcParams.items() if k != "backend"}
    saved, pieces = [], []
    for name, fig in figures:
        path = _figure_path(run, name, None, "", False)
        saved.append((name, path, alt_text(fig)))
        plt.close(fig)  # first: a figure pickled while pyplot holds it reopens in a worker's pyplot
        pieces.append(functools.partial(_draw_png, pickle.dumps(fig), path, style))
    parallel.run(pieces)
    for name, path, alt in saved:
        if shown is None or shown(name):
            _display(path, alt)


def _draw_png(figure: bytes, path: Path, style: dict) -> None:
    """In a worker: the pickled figure saved as `save_figure` saves a PNG, under `style`."""
    with matplotlib.rc_context(style):
        fig = pickle.loads(figure)
        fig.savefig(path, metadata=PNG_METADATA)
        plt.close(fig)


def _figure_path(run: Run, name: str, directory: Path | None, degraded: str, photo: bool) -> Path:
    """Where figure `name` goes: `directory`, else where `run`'s figures go (a `degraded`
    result never replaces a published one: `publishing.kept_published`)."""
    filename = f"{name}.{'jpg' if photo else 'png'}"
    target = run.destination
    directory = (
        directory
        or publishing.kept_published(target, "figures", filename, degraded)
        or target.figures
    )
    directory.mkdir(parents=True, exist_ok=True)
    return directory / filename


def _display(path: Path, alt: str) -> None:
    """In a notebook, the file just written (so a notebook shows exactly what was saved)."""
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(path), alt=alt))


def alt_text(fig: plt.Figure) -> str:
    """What a figure shows, from its own words: the title, then each panel's title and axes."""
    parts = [fig._suptitle.get_text()] if fig._suptitle and fig._suptitle.get_text() else []
    panels = []
    for ax in fig.axes:
        words = [ax.get_title()]
        if ax.get_xlabel() or ax.get_ylabel():
            words.append(" against ".join(w for w in (ax.get_ylabel(), ax.get_xlabel()) if w))
        panel = ": ".join(w for w in words if w)
        if panel and panel not in panels:
            panels.append(panel)
    if panels:
        parts.append(("panels: " if len(panels) > 1 else "") + "; ".join(panels[:8]))
    text = ". ".join(" ".join(p.split()) for p in parts)
    return text or "a figure of the study"


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
    show: bool = False,
) -> None:
    """Write `<name>.csv` and `<name>.md` where `run`'s tables go, the Markdown headed by
    `title` stamped with the substitute `labels` (`provenance.stamp`); a `degraded` result never
    replaces a published one (see save_figure). `show`: also display it for people in a
    notebook (`show_table`), so a cell shows the table once. Returns nothing."""
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
    if show:
        show_table(df, caption)


def for_people(df: pd.DataFrame, caption: str = "") -> tuple[pd.DataFrame, str]:
    """The table as a page shows it, and its caption: a column with one value throughout moves
    into the caption ("view: lab"), numbers keep 2-3 significant decimals, missing values read
    "–", column names lose their underscores. The saved .csv keeps every digit."""
    shown = df.reset_index(drop=True)
    constant = [c for c in shown.columns if len(shown) > 1 and shown[c].nunique(dropna=False) == 1]
    notes = [f"{c}: {_cell(shown[c].iloc[0])}" for c in constant]
    shown = shown.drop(columns=constant).map(_cell)
    shown.columns = [str(c).replace("_", " ") for c in shown.columns]
    caption = "; ".join(p for p in (caption, "; ".join(notes)) if p)
    return shown, caption


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        number = float(value)
        if number.is_integer() and abs(number) < 1e15:
            return f"{int(number):,}"
        if abs(number) >= 100:
            return f"{number:,.0f}"
        if abs(number) >= 0.01:
            return f"{number:.3g}"
        return f"{number:.2g}"
    return str(value)


def table_html(df: pd.DataFrame, caption: str = "") -> str:
    """HTML of `for_people(df, caption)`: no index column, the caption above, long labels
    wrapped by the page (never cut)."""
    shown, caption = for_people(df, caption)
    html = shown.to_html(index=False, escape=True, border=0, classes="microqa-table")
    if caption:
        import html as _html

        html = html.replace(">", f"><caption>{_html.escape(caption)}</caption>", 1)
    return html


def show_table(df: pd.DataFrame, caption: str = "") -> None:
    """Display a table for people in a notebook (see for_people); nothing outside one."""
    if _in_notebook():
        from IPython.display import HTML, display

        display(HTML(table_html(df, caption)))


def wrap_tick_labels(
    ax: plt.Axes, *, width: int = 14, axis: str = "both", rotation: float | None = None
) -> None:
    """Wrap long class names on word boundaries (so "Metal or alloy" and "Ceramic" never run
    into each other) and optionally rotate them; call after the ticks exist."""
    for which in ("x", "y") if axis == "both" else (axis,):
        get = ax.get_xticklabels if which == "x" else ax.get_yticklabels
        set_ = ax.set_xticklabels if which == "x" else ax.set_yticklabels
        labels = [drawing.wrap(t.get_text(), width) for t in get()]
        if not any(labels):
            continue
        kwargs = {} if rotation is None else {"rotation": rotation}
        if which == "x" and rotation not in (None, 0, 90):
            kwargs["ha"] = "right"
            kwargs["rotation_mode"] = "anchor"
        set_(labels, **kwargs)


def count_heatmap(
    table: pd.DataFrame, ax: plt.Axes, *, cmap: str = "mako_r", label: str = "records"
) -> None:
    """Counts on a LINEAR colour scale starting at 0, every cell annotated, colour bar ticks as
    whole numbers; zero cells left blank so empty combinations read as empty."""
    values = table.astype(float)
    vmax = max(1.0, float(values.to_numpy().max()))
    colorbar = drawing.heatmap(
        values.where(values > 0),
        ax,
        fmt=".0f",
        cmap=cmap,
        vmin=0,
        vmax=vmax,
        colorbar_label=label,
        linewidths=0.5,
        linecolor="0.85",
        fontsize=9,
    )
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    ax.set_facecolor("white")


def timing_sentence(timing: dict[str, dict]) -> str:
    """A run's embedding times ({model: {seconds_per_image, device, n}}) as one sentence for a
    page, instead of the raw dict (e.g. notebook 03's
    `display(Markdown(plots.timing_sentence(run.timing)))`)."""
    parts = [
        f"{model}: {t['seconds_per_image'] * 1000:.1f} ms per image on {t.get('device', '?')} "
        f"({t.get('n', '?')} images)"
        for model, t in timing.items()
        if t and t.get("seconds_per_image") is not None
    ]
    return ("Embedding time: " + "; ".join(parts) + ".") if parts else "No embedding was timed."
