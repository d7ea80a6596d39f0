"""The shared heatmap: cells in table order, blanks for NaN, readable annotation colours."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from microqa import drawing  # noqa: E402


def _texts(ax):
    return {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}


def test_cells_follow_the_table_and_nan_cells_stay_blank():
    table = pd.DataFrame([[0.0, np.nan], [5.0, 10.0]], index=["r0", "r1"], columns=["c0", "c1"])
    fig, ax = plt.subplots()
    colorbar = drawing.heatmap(table, ax, fmt=".0f", vmin=0, vmax=10)
    texts = _texts(ax)
    # first row at the top: y grows downwards, so row 0 sits at y = 0.5 above row 1 at 1.5
    assert ax.get_ylim() == (2.0, 0.0)
    assert {(pos, text) for pos, text in texts} == {
        ((0.5, 0.5), "0"),
        ((0.5, 1.5), "5"),
        ((1.5, 1.5), "10"),
    }
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r0", "r1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c0", "c1"]
    assert colorbar is None and len(fig.axes) == 1
    plt.close(fig)


def test_dark_cells_get_white_text_and_light_cells_dark_text():
    table = pd.DataFrame([[0, 100]], columns=["light", "dark"])
    fig, ax = plt.subplots()
    drawing.heatmap(table, ax, cmap="Blues", vmin=0, vmax=100)
    colours = {text: colour for (_, text), colour in _texts(ax).items()}
    assert colours == {"0": "0.15", "100": "white"}
    plt.close(fig)


def test_annotations_can_differ_from_the_colours_and_a_colour_bar_is_labelled():
    share = pd.DataFrame([[0.25, 0.75]], columns=["a", "b"])
    fig, ax = plt.subplots()
    colorbar = drawing.heatmap(share, ax, annot=np.array([[1, 3]]), fmt="d", colorbar_label="share")
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3"]
    assert colorbar.ax.get_ylabel() == "share"
    plt.close(fig)


def test_wrap_breaks_between_words_only():
    assert drawing.wrap("Optical (transmitted)", 12) == "Optical\n(transmitted)"
    assert drawing.wrap("Electronmicroscopy", 5) == "Electronmicroscopy"
    assert drawing.wrap("", 5) == ""
