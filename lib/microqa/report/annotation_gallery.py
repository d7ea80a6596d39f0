"""The gallery of masked regions: what the ``masked`` image variant hides from a model.

A seeded dozen micrographs, one technique family after another, each with the annotation
boxes the detector (`data.annotations`) found drawn over it, labelled by kind; the caption
counts them. A reader sees what the masking control removed (and what it missed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd
from matplotlib.patches import Rectangle

from microqa.data import annotations, images
from microqa.report.galleries import THUMB_PX, Gallery, Tile, seeded_pick, tile_figure

BOX_COLOURS = {"data_bar": "#d4a017", "scale_bar": "#e8590c", "text": "#7048e8"}


def _detected(image_path: str) -> tuple[list[annotations.Box], tuple[int, int]]:
    """The boxes found in an image and its size ([] and (0, 0) when it does not decode)."""
    try:
        image = images.open_rgb(image_path)
    except images.ImageError:
        return [], (0, 0)
    return annotations.detect(image), image.size


def _caption(boxes: Sequence[annotations.Box]) -> list[str]:
    if not boxes:
        return ["no annotation found"]
    counts = Counter(box.kind for box in boxes)
    return [", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(counts.items()))]


def annotation_gallery(
    records: pd.DataFrame, n: int = 12, *, seed: int = 0, labels: Sequence[str] = ()
) -> Gallery:
    """`n` seeded records (round-robin over technique families) with their detected boxes."""
    picked = seeded_pick(records, n, seed, by="technique_family")
    found = [_detected(row.image_path) for row in picked.itertuples()]
    tiles = [
        Tile(row.micrograph_no, row.image_path, _caption(boxes))
        for row, (boxes, _size) in zip(picked.itertuples(), found, strict=True)
    ]
    per_row = 4
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    gallery = tile_figure(
        rows,
        f"Annotation regions the masked variant hides ({len(picked)} records, boxes drawn)",
        labels,
        caption_lines=1,
    )
    drawn = [ax for ax in gallery.figure.axes if ax.get_images()]  # tiles in row-major order
    for ax, (boxes, (width, height)) in zip(drawn, found, strict=False):
        if not width:
            continue
        # the thumbnail is the image fitted into THUMB_PX x THUMB_PX, centred (galleries.thumbnail)
        scale = min(THUMB_PX / width, THUMB_PX / height)
        x_off, y_off = (THUMB_PX - width * scale) / 2, (THUMB_PX - height * scale) / 2
        for box in boxes:
            ax.add_patch(
                Rectangle(
                    (x_off + box.x0 * scale, y_off + box.y0 * scale),
                    (box.x1 - box.x0) * scale,
                    (box.y1 - box.y0) * scale,
                    fill=False,
                    edgecolor=BOX_COLOURS.get(box.kind, "#e8590c"),
                    linewidth=2,
                    linestyle="--",
                )
            )
    return gallery
