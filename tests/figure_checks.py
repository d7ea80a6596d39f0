"""What a reader of a rendered page can read of a figure: text at least `plots.MIN_FONT_PX` at
the width the page shows it (`plots.PAGE_PX`), and no two texts drawn over each other. Used by
every test that draws a figure of the study (galleries, EDA, CLIP, VLM, comparison)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from microqa.report import plots


def visible_texts(fig):
    """Every text artist a reader sees: titles, captions, tick and axis labels, legends."""
    texts = [fig._suptitle] if fig._suptitle else []
    texts += list(fig.texts)
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += list(legend.get_texts())
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:  # an axis turned off draws no labels
            texts += [ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn: inside the view limits
                texts += [label for t in axis._update_ticks() for label in (t.label1, t.label2)]
    texts = list({id(t): t for t in texts}.values())  # the suptitle is also in fig.texts
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def unreadable(fig) -> list[str]:
    """What a reader of the page could not read: text under PAGE_PX-wide display's 10 px, and
    pairs of text artists whose rendered boxes overlap (2 px tolerance)."""
    # Legends and tight layouts place their text when drawn. No pixels are needed for that,
    # and resampling the images (a gallery's micrographs) was most of the drawing's time.
    shown = [image for ax in fig.axes for image in ax.images if image.get_visible()]
    for image in shown:
        image.set_visible(False)
    try:
        fig.draw_without_rendering()
    finally:
        for image in shown:
            image.set_visible(True)
    renderer = fig.canvas.get_renderer()
    texts = visible_texts(fig)
    # saved with bbox "tight": a title wider than the figure widens the file, and the page
    # shrinks the whole file (text included) to PAGE_PX
    saved_px = fig.get_tightbbox(renderer).width * plots.SAVE_DPI
    scale = min(plots.shown_scale(fig), plots.PAGE_PX / saved_px)

    def shown_px(t) -> float:
        return t.get_fontsize() * plots.SAVE_DPI / 72 * scale

    problems = [
        f"{t.get_text()[:30]!r} is {shown_px(t):.1f} px"
        for t in texts
        if shown_px(t) < plots.MIN_FONT_PX
    ]
    boxes = [(t, t.get_window_extent(renderer).expanded(1, 1).padded(-2)) for t in texts]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            if box_a.width > 0 and box_b.width > 0 and box_a.overlaps(box_b):
                problems.append(f"{a.get_text()[:30]!r} overlaps {b.get_text()[:30]!r}")
    return problems


def assert_readable(fig) -> None:
    """Fail with what a reader could not read; the figure is closed either way."""
    try:
        problems = unreadable(fig)
        assert problems == [], "unreadable at page width:\n" + "\n".join(problems)
    finally:
        plt.close(fig)
