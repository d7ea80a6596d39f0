"""Annotation regions of a micrograph: scale bars, SEM/TEM data bars and the text burned in.

Micrographs carry marks that are not microstructure: a scale bar with its length written above it
(bright or dark, usually centred near the bottom edge), and instrument data bars (a black strip
along the bottom edge, or a dark box holding the voltage, magnification and a scale bar). A model
can read the technique off those marks instead of the microstructure; the ``masked`` variant
(`variants.py`) paints them over so that shortcut can be measured.

How the detector works (on a grayscale copy downscaled to at most `DETECT_WIDTH` pixels wide):

1. *Flat extreme runs*: a pixel is marked when it lies on a horizontal run of nearly constant
   value (neighbours within `FLAT_STEP` grey levels) at least `MIN_RUN` of the width long, and
   the run is very dark or very bright. Drawn marks are flat and saturated; microstructure is
   textured, so it rarely produces such runs.
2. The marked pixels are closed vertically (text splits a data bar's rows into pieces) and
   grouped into connected regions. A region is kept when it lies in the top or bottom band of the
   image, is at most `MAX_HEIGHT` of the height tall, and fills most of its bounding box.
3. A thick region is a **data bar** (its box is the region's). A thin one is a **scale bar**:
   its box grows upwards over the rows above it that hold pixels of the bar's own colour (the
   length label written above the bar), at most `LABEL_HEIGHT` of the image height.

What it does not find (said here so the recall below is read correctly): text and arrows placed
inside the micrograph away from the borders, colour bars and axis labels of AFM plots, and scale
bars drawn in a mid-grey (semi-transparent) tone. `evaluate` scores the detector against the
hand-labelled set `tests/data/annotation_boxes.csv` (drawn by `tools/draw_annotation_sample.py`).
The thresholds above were tuned while looking at that same set, so its precision and recall are
in-sample (optimistic); a second, held-out labelled draw would measure them honestly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

DETECT_WIDTH = 400  # detection runs on a copy this wide at most (speed; marks stay visible)
FLAT_STEP = 8  # grey levels between neighbours still counted as the same flat run
MIN_RUN = 0.08  # a flat run spans at least this share of the width
DARK, BRIGHT = 45, 225  # a mark is drawn at least this dark or this bright
TOP_BAND, BOTTOM_BAND = 0.12, 0.35  # marks are searched in these shares of the height
MIN_WIDTH = 0.12  # a mark spans at least this share of the width
MIN_ASPECT = 1.5  # and is at least this many times as wide as it is tall
MAX_HEIGHT = 0.25  # a mark is at most this share of the height tall
MIN_FILL = 0.55  # marked pixels fill at least this share of a mark's bounding box
THICK = 0.045  # a region at least this share of the height tall is a data bar, else a bar
MIN_MARKS = 0.01  # a data bar carries marks: this share of its pixels far from its own colour
LABEL_HEIGHT = 0.13  # a scale bar's label sits within this share of the height above it
IOU_MATCH = 0.3  # a detected box matches a labelled one at this intersection over union

KINDS = ("scale_bar", "data_bar", "text", "colour_bar")


class Box(NamedTuple):
    """An axis-aligned box in pixels of the original image (x1, y1 exclusive) and its kind."""

    x0: int
    y0: int
    x1: int
    y1: int
    kind: str

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.area + b.area - inter)


def _flat_extreme_runs(gray: np.ndarray) -> np.ndarray:
    """Pixels on long horizontal runs of nearly constant, very dark or very bright value."""
    height, width = gray.shape
    signed = gray.astype(np.int16)
    same = np.abs(np.diff(signed, axis=1)) <= FLAT_STEP  # pixel x equals pixel x+1
    extreme = (gray <= DARK) | (gray >= BRIGHT)
    marked = np.zeros_like(gray, dtype=bool)
    min_run = max(3, int(MIN_RUN * width))
    for y in range(height):
        # run boundaries: a break wherever neighbours differ or the value stops being extreme
        joined = same[y] & extreme[y, :-1] & extreme[y, 1:]
        edges = np.flatnonzero(np.diff(np.concatenate(([0], joined.astype(np.int8), [0]))))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start + 1 >= min_run:
                marked[y, start : stop + 1] = True
    return marked


def _label_top(gray: np.ndarray, x0: int, x1: int, y0: int, value: float) -> int:
    """The top row of the label written above a scale bar in the bar's colour."""
    lowest = max(0, y0 - int(round(LABEL_HEIGHT * gray.shape[0])))
    inked = np.abs(gray[lowest:y0, x0:x1].astype(np.int16) - value) <= 40
    rows = np.flatnonzero(inked.any(axis=1))
    return lowest + int(rows[0]) if rows.size else y0


def _grow_over_blank_rows(
    gray: np.ndarray, blank: np.ndarray, y0: int, y1: int, value: float
) -> tuple[int, int]:
    """A data bar's rows extended over the blank rows of its own colour above and below it."""

    def same(y: int) -> bool:
        return bool(blank[y]) and abs(float(gray[y, 0]) - value) <= 40

    while y0 > 0 and same(y0 - 1):
        y0 -= 1
    while y1 < gray.shape[0] and same(y1):
        y1 += 1
    return y0, y1


def _grow_sideways(gray: np.ndarray, x0: int, x1: int, y0: int, y1: int, value: float):
    """A data bar's columns extended while at least half of each column is the bar's colour."""

    def same(x: int) -> bool:
        return bool((np.abs(gray[y0:y1, x].astype(np.int16) - value) <= 40).mean() >= 0.5)

    while x0 > 0 and same(x0 - 1):
        x0 -= 1
    while x1 < gray.shape[1] and same(x1):
        x1 += 1
    return x0, x1


def _merge_overlapping(boxes: list[Box]) -> list[Box]:
    """Boxes that overlap replaced by their union (a bar found in two pieces is one bar)."""
    merged: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b.area):
        for i, kept in enumerate(merged):
            if min(box.x1, kept.x1) > max(box.x0, kept.x0) and min(box.y1, kept.y1) > max(
                box.y0, kept.y0
            ):
                merged[i] = Box(
                    min(box.x0, kept.x0),
                    min(box.y0, kept.y0),
                    max(box.x1, kept.x1),
                    max(box.y1, kept.y1),
                    kept.kind,
                )
                break
        else:
            merged.append(box)
    return merged


def _detect_scaled(gray: np.ndarray) -> list[Box]:
    """Boxes in the pixels of `gray` (already downscaled)."""
    height, width = gray.shape
    marked = _flat_extreme_runs(gray)
    marked[int(TOP_BAND * height) : height - int(BOTTOM_BAND * height)] = False
    # A blank row (one flat colour across the whole width) is a frame or a bar's margin: it would
    # join a mark to the frame, so it is left out here and added back to the data bars below.
    blank = (gray.max(axis=1).astype(np.int16) - gray.min(axis=1)) <= 2 * FLAT_STEP
    marked[blank] = False
    closing = max(1, height // 60)
    size = 2 * closing + 1  # closes the gaps between the letters written on a bar
    padded = np.pad(marked, closing, mode="edge")  # so the closing does not eat the edges
    closed = ndimage.binary_closing(padded, structure=np.ones((size, size), bool))
    marked = closed[closing:-closing, closing:-closing]
    regions, _count = ndimage.label(marked)
    boxes = []
    for index, found in enumerate(ndimage.find_objects(regions), start=1):
        rows, cols = found
        y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
        box_height = y1 - y0
        fill = (regions[found] == index).mean()
        too_tall = box_height > MAX_HEIGHT * height or x1 - x0 < MIN_ASPECT * box_height
        if too_tall or fill < MIN_FILL or x1 - x0 < MIN_WIDTH * width:
            continue
        value = float(np.median(gray[found][regions[found] == index]))
        grown_y0, grown_y1 = _grow_over_blank_rows(gray, blank, y0, y1, value)
        if grown_y1 - grown_y0 >= THICK * height:
            x0, x1 = _grow_sideways(gray, x0, x1, grown_y0, grown_y1, value)
            inside = gray[grown_y0:grown_y1, x0:x1].astype(np.int16)
            if (np.abs(inside - value) > 100).mean() >= MIN_MARKS:
                boxes.append(Box(x0, grown_y0, x1, grown_y1, "data_bar"))
        else:
            boxes.append(Box(x0, _label_top(gray, x0, x1, y0, value), x1, y1, "scale_bar"))
    return _merge_overlapping(boxes)


def detect(image: Image.Image) -> list[Box]:
    """Annotation boxes of an RGB or grayscale micrograph, in its own pixels."""
    gray = image.convert("L")
    scale = min(1.0, DETECT_WIDTH / gray.width)
    if scale < 1.0:
        gray = gray.resize((DETECT_WIDTH, max(1, round(gray.height * scale))), Image.Resampling.BOX)
    sx, sy = image.width / gray.width, image.height / gray.height
    return [
        Box(
            int(box.x0 * sx),
            int(box.y0 * sy),
            min(image.width, int(np.ceil(box.x1 * sx))),
            min(image.height, int(np.ceil(box.y1 * sy))),
            box.kind,
        )
        for box in _detect_scaled(np.asarray(gray))
    ]


def mask_annotations(image: Image.Image, boxes: Sequence[Box] | None = None) -> Image.Image:
    """A copy of `image` with its annotation boxes painted in the image's median colour."""
    rgb = image.convert("RGB")
    boxes = detect(rgb) if boxes is None else boxes
    pixels = np.array(rgb)
    median = np.median(pixels.reshape(-1, 3), axis=0).astype(np.uint8)
    for box in boxes:
        pixels[box.y0 : box.y1, box.x0 : box.x1] = median
    return Image.fromarray(pixels, "RGB")


def _match_count(truth: Sequence[Box], predicted: Sequence[Box]) -> int:
    """Pairs matched one-to-one at IoU >= IOU_MATCH, greedily from the best overlap down."""
    pairs = sorted(
        ((iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(predicted)),
        reverse=True,
    )
    used_true, used_pred = set(), set()
    for overlap, i, j in pairs:
        if overlap < IOU_MATCH:
            break
        if i not in used_true and j not in used_pred:
            used_true.add(i)
            used_pred.add(j)
    return len(used_true)


def evaluate(
    boxes_true: Mapping[int, Sequence[Box]], boxes_pred: Mapping[int, Sequence[Box]]
) -> dict[str, float]:
    """Box-level precision and recall at IoU >= 0.3, pooled over the labelled images.

    Both mappings are keyed by micrograph number; every key of `boxes_true` is an evaluated image
    (an empty list: no annotation), keys only in `boxes_pred` are an error. Boxes match one-to-one
    whatever their kinds. Returns counts (images, labelled, detected, matched) and the two rates
    (NaN when their denominator is zero), plus the recall per labelled kind.
    """
    extra = set(boxes_pred) - set(boxes_true)
    if extra:
        raise ValueError(f"predicted boxes for unlabelled micrographs: {sorted(extra)[:5]}")
    n_true = n_pred = matched = 0
    per_kind: dict[str, list[int]] = {}
    for key, truth in boxes_true.items():
        predicted = boxes_pred.get(key, [])
        n_true += len(truth)
        n_pred += len(predicted)
        matched += _match_count(truth, predicted)
        for kind in {box.kind for box in truth}:
            of_kind = [box for box in truth if box.kind == kind]
            found = _match_count(of_kind, predicted)
            totals = per_kind.setdefault(kind, [0, 0])
            totals[0] += found
            totals[1] += len(of_kind)
    result = {
        "images": float(len(boxes_true)),
        "labelled": float(n_true),
        "detected": float(n_pred),
        "matched": float(matched),
        "precision": matched / n_pred if n_pred else float("nan"),
        "recall": matched / n_true if n_true else float("nan"),
    }
    for kind, (found, total) in sorted(per_kind.items()):
        result[f"recall_{kind}"] = found / total
    return result


def read_labels(path) -> dict[int, list[Box]]:
    """The hand-labelled boxes (micrograph_no, x0, y0, x1, y1, kind; kind ``none``: no box)."""
    import csv

    labels: dict[int, list[Box]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            boxes = labels.setdefault(int(row["micrograph_no"]), [])
            if row["kind"] == "none":
                continue
            if row["kind"] not in KINDS:
                raise ValueError(f"{path}: unknown annotation kind {row['kind']!r}")
            coords = [int(row[name]) for name in ("x0", "y0", "x1", "y1")]
            boxes.append(Box(*coords, row["kind"]))
    return labels
