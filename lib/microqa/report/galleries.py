"""Micrograph galleries: the images themselves, beside what each method said about them.

Every gallery is a grid of whole micrographs (each image fitted into its cell, never cropped,
so the scale bar DoITPoMS burns into the image stays visible), decoded by `images.open_rgb`,
captioned with the record id (#N: the DoITPoMS record page), the true label, and where a
method answered, its prediction and confidence (✓ right, ✗ wrong). Picks are seeded, titles
carry the offline-substitute labels (`provenance.stamp`) like every figure.

One call per notebook cell, e.g.
`galleries.examples_grid(records, labels).save("gallery_examples")`: `save` writes the figure (JPEG)
where this run's figures go (plots.save_figure) and, in a notebook, lists the records shown as
links to their DoITPoMS pages.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from PIL import ImageOps

from microqa import drawing, provenance
from microqa.data import images, taxonomy
from microqa.report import plots
from microqa.run import Run

RECORD_URL = "https://www.doitpoms.ac.uk/miclib/micrograph_record.php?id={}"
THUMB_PX = 360  # long side of a thumbnail: scale-bar text stays legible at the report's size
CELL_INCHES = 2.5
MAX_WIDTH_INCHES = 15.0  # at 150 dpi shown PAGE_PX wide: 9-point text is 10 px on the page
CAPTION_PT = 9
GAP = 0.15  # inches between columns
LINE = 0.19  # inches per 9-point caption line
TITLE = 0.28  # inches above an image for its "#id" title
RIGHT, WRONG = "#1a7f37", "#cf222e"  # frame colours; the ✓ / ✗ marks say it without colour
NONE = "(none)"


def record_url(micrograph_no: int) -> str:
    """The DoITPoMS page of a record."""
    return RECORD_URL.format(int(micrograph_no))


@dataclass
class Tile:
    """One cell: a record's image and its caption lines, or an empty cell saying why."""

    micrograph_no: int | None = None
    image_path: str = ""
    lines: list[str] = field(default_factory=list)
    correct: bool | None = None  # None: nothing was predicted
    empty: str = ""  # text of an empty cell


@dataclass
class Gallery:
    figure: plt.Figure
    ids: list[int]

    def links_markdown(self) -> str:
        links = ", ".join(f"[#{n}]({record_url(n)})" for n in self.ids)
        return f"Records shown (their DoITPoMS pages): {links}" if self.ids else ""

    def save(self, run: Run, name: str, *, degraded: str = "", show: bool = True) -> None:
        """Write <name>.jpg where `run`'s figures go (via plots.save_figure; `degraded` and
        `show` as there) and, when shown, list the records as links."""
        plots.save_figure(run, self.figure, name, photo=True, degraded=degraded, show=show)
        if show and plots._in_notebook() and self.ids:
            from IPython.display import Markdown, display

            display(Markdown(self.links_markdown()))


def thumbnail(path: str, size: int = THUMB_PX) -> np.ndarray:
    """The whole image fitted inside size x size (aspect kept, nothing cropped)."""
    return np.asarray(ImageOps.contain(images.open_rgb(path), (size, size)))


def _caption(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(str(text), width, break_long_words=True)) or str(text)


def draw_tile(ax: plt.Axes, tile: Tile) -> None:
    ax.set_xlim(0, THUMB_PX)
    ax.set_ylim(THUMB_PX, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if tile.micrograph_no is None:
        ax.add_patch(Rectangle((0, 0), THUMB_PX, THUMB_PX, facecolor="0.95", edgecolor="0.8"))
        ax.text(
            THUMB_PX / 2,
            THUMB_PX / 2,
            tile.empty,
            ha="center",
            va="center",
            color="0.4",
            fontsize=CAPTION_PT,
        )
        ax.set_title("", fontsize=CAPTION_PT, pad=2)
        return
    try:
        pixels = thumbnail(tile.image_path)
    except images.ImageError as error:
        ax.text(
            THUMB_PX / 2,
            THUMB_PX / 2,
            _caption(f"cannot decode: {error}", 28),
            ha="center",
            fontsize=CAPTION_PT,
        )
        pixels = None
    if pixels is not None:
        h, w = pixels.shape[:2]
        x0, y0 = (THUMB_PX - w) / 2, (THUMB_PX - h) / 2
        ax.imshow(pixels, extent=(x0, x0 + w, y0 + h, y0), interpolation="lanczos")
        if tile.correct is not None:
            colour = RIGHT if tile.correct else WRONG
            ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=colour, linewidth=3))
    mark = {True: " ✓", False: " ✗", None: ""}[tile.correct]
    ax.set_title(
        f"#{tile.micrograph_no}{mark}",
        fontsize=CAPTION_PT,
        pad=2,
        url=record_url(tile.micrograph_no),
    )
    ax.text(
        0.5,
        -0.02,
        "\n".join(_caption(line) for line in tile.lines),
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=CAPTION_PT,
    )


def tile_figure(
    rows: list[list[Tile]],
    title: str,
    labels: Sequence[str],
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    caption_lines: int = 1,
) -> Gallery:
    """Lay tiles out row by row (short rows padded with blank cells), every band measured in
    inches so nothing overlaps: the title, a column header, each row's tile titles, images and
    captions (as many lines as its longest caption wraps to, at least `caption_lines`). The
    figure stays at most MAX_WIDTH_INCHES wide, so its 9-point text reads at >= 10 px on the
    page (plots.shown_font_px)."""
    ncols = max(1, max((len(r) for r in rows), default=1))
    nrows = max(1, len(rows))
    left = 1.35 if row_labels else 0.15
    cell = min(CELL_INCHES, (MAX_WIDTH_INCHES - left - 0.15 - GAP * (ncols - 1)) / ncols)
    width = left + ncols * cell + GAP * (ncols - 1) + 0.15
    heading = textwrap.wrap(provenance.stamp(title, labels), int(width * 72 / (12 * 0.6)))
    header_lines = max((len(drawing.wrap(c, 22).split("\n")) for c in col_labels), default=0)
    top = 0.2 + LINE * 1.4 * len(heading) + LINE * 1.15 * header_lines
    bands = []
    for row in rows:
        lines = max((_caption_height(t) for t in row), default=0)
        bands.append(TITLE + cell + LINE * max(lines, caption_lines) + 0.15)
    height = top + sum(bands) + 0.1
    fig = plt.figure(figsize=(width, height))
    fig.suptitle("\n".join(heading), weight="bold", fontsize=12, y=1 - 0.12 / height, va="top")
    ids = []
    y = height - top
    for r in range(nrows):
        row = rows[r] if r < len(rows) else []
        y_image = y - TITLE - cell
        for c, tile in enumerate(row):
            x = left + c * (cell + GAP)
            ax = fig.add_axes((x / width, y_image / height, cell / width, cell / height))
            draw_tile(ax, tile)
            if tile.micrograph_no is not None:
                ids.append(int(tile.micrograph_no))
            if r == 0 and c < len(col_labels):  # column header above the first row's title
                header = drawing.wrap(col_labels[c], 22)
                tile_title = ax.get_title()
                ax.set_title(
                    f"{header}\n{tile_title}" if tile_title else header, fontsize=10, pad=2
                )
            if c == 0 and r < len(row_labels):
                ax.annotate(
                    drawing.wrap(row_labels[r], 14),
                    (-0.08, 0.5),
                    xycoords="axes fraction",
                    ha="right",
                    va="center",
                    fontsize=10,
                    weight="bold",
                )
        y -= bands[r]
    return Gallery(fig, list(dict.fromkeys(ids)))


def _caption_height(tile: Tile) -> int:
    """Lines a tile's caption takes once wrapped (draw_tile wraps each line alike)."""
    return sum(len(_caption(line).split("\n")) for line in tile.lines)


def seeded_pick(df: pd.DataFrame, n: int, seed: int, by: str | None = None) -> pd.DataFrame:
    """n rows in a seeded order; with `by`, taken round-robin over its values so every class
    shows before any class shows twice."""
    if df.empty or n <= 0:
        return df.iloc[:0]
    rng = np.random.default_rng(seed)
    shuffled = df.iloc[rng.permutation(len(df))]
    if by is None:
        return shuffled.head(n)
    rank = shuffled.groupby(shuffled[by].fillna(NONE), sort=False).cumcount()
    return shuffled.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").head(n)


def _label(value) -> str:
    return NONE if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def record_lines(row) -> list[str]:
    """Family and primary category of a record (a DataFrame row or an itertuples tuple)."""
    get = row.get if isinstance(row, pd.Series) else lambda key: getattr(row, key)
    return [_label(get("technique_family")), _label(get("primary_category"))]


# --- 01: what a record looks like ------------------------------------------------------------


def record_preview(
    records: pd.DataFrame, n: int = 8, *, seed: int = 0, labels: Sequence[str] = ()
) -> Gallery:
    """A seeded handful of records, one technique family after another."""
    picked = seeded_pick(records, n, seed, by="technique_family")
    tiles = [Tile(r.micrograph_no, r.image_path, record_lines(r)) for r in picked.itertuples()]
    per_row = 4
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    return tile_figure(rows, f"Records of this dataset ({len(picked)} of {len(records)})", labels)


# --- 02: technique family x primary category -------------------------------------------------


def examples_grid(records: pd.DataFrame, labels: Sequence[str] = (), *, seed: int = 0) -> Gallery:
    """One seeded example per technique family x primary category; an empty combination is
    drawn as an empty cell saying so, and each cell says how many records it stands for."""
    family = records["technique_family"].fillna(NONE)
    category = records["primary_category"].fillna(NONE)
    families = [f for f in (*taxonomy.ALL_FAMILIES, NONE) if (family == f).any()]
    categories = [c for c in (*taxonomy.PRIMARY_CATEGORIES, NONE) if (category == c).any()]
    rows = []
    for f in families:
        row = []
        for c in categories:
            cell = records[(family == f) & (category == c)]
            if cell.empty:
                row.append(Tile(empty="no records"))
                continue
            pick = next(seeded_pick(cell, 1, seed).itertuples())
            row.append(
                Tile(
                    pick.micrograph_no,
                    pick.image_path,
                    [f"{len(cell)} record{'' if len(cell) == 1 else 's'}"],
                )
            )
        rows.append(row)
    return tile_figure(
        rows,
        f"Examples per technique family × primary category ({len(records)} records)",
        labels,
        row_labels=families,
        col_labels=categories,
        caption_lines=1,
    )


# --- 03: image -> image retrieval ------------------------------------------------------------


def retrieval_panels(
    records: pd.DataFrame,
    ids: Sequence[int],
    features: np.ndarray,
    *,
    n_queries: int = 5,
    k: int = 4,
    seed: int = 0,
    labels: Sequence[str] = (),
    features_name: str = "image features",
) -> Gallery:
    """Per query (seeded, one technique family after another): the query and its k nearest
    neighbours by cosine similarity among images of OTHER specimens (the query's own specimen
    would be a near-duplicate). ✓ when a neighbour shares the query's technique family."""
    table = records.set_index("micrograph_no")
    keep = [i for i, n in enumerate(ids) if int(n) in table.index]
    ids = np.asarray([int(ids[i]) for i in keep])
    vectors = np.asarray(features, dtype=np.float64)[keep]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    groups = table.loc[ids, "specimen_group"].to_numpy()
    candidates = table.loc[ids].reset_index()
    queries = seeded_pick(candidates, n_queries, seed, by="technique_family")
    rows = []
    for query in queries.itertuples():
        q = int(np.flatnonzero(ids == query.micrograph_no)[0])
        similarity = vectors @ vectors[q]
        similarity[groups == groups[q]] = -np.inf  # same specimen (and the query itself)
        order = [
            i for i in np.argsort(-similarity, kind="stable")[:k] if np.isfinite(similarity[i])
        ]
        row = [Tile(query.micrograph_no, query.image_path, record_lines(query))]
        for i in order:
            hit = table.loc[ids[i]]
            row.append(
                Tile(
                    int(ids[i]),
                    hit["image_path"],
                    [f"cosine {similarity[i]:.2f}", *record_lines(hit)],
                    correct=hit["technique_family"] == query.technique_family,
                )
            )
        rows.append(row)
    return tile_figure(
        rows,
        f"Nearest neighbours from other specimens ({features_name})",
        labels,
        col_labels=["query", *[f"neighbour {j + 1}" for j in range(k)]],
    )
