"""The masked-regions gallery draws the detector's boxes where they lie on each thumbnail."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from microqa.report.annotation_gallery import annotation_gallery
from microqa.report.galleries import THUMB_PX
from tests.test_annotations import _texture


def _records(tmp_path) -> pd.DataFrame:
    barred = _texture(300, 400)
    barred[260:300] = 0  # a data bar along the bottom: thumbnail rows 270..360 of a 360 cell
    barred[270:290, 40:60] = 255
    rows = []
    for number, (pixels, family) in enumerate(
        [(barred, "SEM"), (_texture(300, 400, seed=5), "Optical (reflected)")], start=1
    ):
        path = tmp_path / f"{number:06d}.png"
        Image.fromarray(pixels).convert("RGB").save(path)
        rows.append({"micrograph_no": number, "image_path": str(path), "technique_family": family})
    return pd.DataFrame(rows)


def test_boxes_are_drawn_on_the_thumbnail_and_counted_in_the_caption(tmp_path):
    gallery = annotation_gallery(_records(tmp_path), n=2, seed=0, labels=["test"])
    assert sorted(gallery.ids) == [1, 2]
    tiles = {ax.get_title().split()[0]: ax for ax in gallery.figure.axes if ax.get_images()}
    boxes = [
        p for p in tiles["#1"].patches if isinstance(p, Rectangle) and p.get_linestyle() == "--"
    ]
    assert len(boxes) == 1
    # a 400x300 image fills the 360 cell's width: scale 0.9, centred vertically (offset 45)
    assert boxes[0].get_xy() == pytest.approx((0, 45 + 260 * 0.9), abs=2)
    assert boxes[0].get_width() == pytest.approx(THUMB_PX, abs=2)
    assert boxes[0].get_height() == pytest.approx(40 * 0.9, abs=2)
    assert not [p for p in tiles["#2"].patches if p.get_linestyle() == "--"]
    text = " ".join(t.get_text() for ax in gallery.figure.axes for t in ax.texts)
    assert "1 data bar" in text and "no annotation found" in text
    plt.close(gallery.figure)
