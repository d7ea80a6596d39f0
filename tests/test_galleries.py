"""galleries.py on the embedded sample: what each gallery shows, that it is seeded, stamped and
never crops an image."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microqa.data import dataset, taxonomy
from microqa.report import answer_galleries, galleries
from tests.conftest import REPO
from tests.figure_checks import unreadable

SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return dataset.load_records(SAMPLE)


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        parts.append(ax.get_title())
        parts += [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def _close(gallery):
    """Every gallery a test draws is also checked readable at page width."""
    figure = getattr(gallery, "figure", gallery)
    try:
        assert unreadable(figure) == []
    finally:
        plt.close(figure)


def test_thumbnail_keeps_the_whole_image_and_its_bottom_scale_bar(tmp_path):
    pixels = np.full((200, 600, 3), 128, dtype=np.uint8)
    pixels[-12:, 40:200] = 255  # a white scale bar along the bottom edge
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    thumb = galleries.thumbnail(str(path), size=300)
    assert thumb.shape == (100, 300, 3)  # fitted, aspect kept, not cropped to a square
    assert thumb[-4:, 30:90].mean() > 240  # the bar is still there at the bottom


def test_examples_grid_has_one_cell_per_combination_and_says_which_are_empty(records):
    gallery = galleries.examples_grid(records, ["sample data"], seed=0)
    family = records["technique_family"].fillna(galleries.NONE)
    category = records["primary_category"].fillna(galleries.NONE)
    table = pd.crosstab(family, category)
    shown = records.set_index("micrograph_no").loc[gallery.ids]
    pairs = set(
        zip(
            shown["technique_family"].fillna(galleries.NONE),
            shown["primary_category"].fillna(galleries.NONE),
            strict=True,
        )
    )
    assert pairs == {(f, c) for f in table.index for c in table.columns if table.loc[f, c] > 0}
    assert len(gallery.ids) == len(pairs)  # one example per non-empty combination
    text = _texts(gallery.figure)
    assert text.count("no records") == int((table == 0).to_numpy().sum())
    assert "[SAMPLE DATA]" in text
    assert all(f"#{n}" in text for n in gallery.ids)
    assert gallery.links_markdown().count("micrograph_record.php?id=") == len(gallery.ids)
    _close(gallery)


def test_picks_are_seeded(records):
    first = galleries.record_preview(records, n=6, seed=3)
    again = galleries.record_preview(records, n=6, seed=3)
    other = galleries.record_preview(records, n=6, seed=4)
    assert first.ids == again.ids and first.ids != other.ids
    # round-robin over families: six picks cover six families when the sample has them
    families = records.set_index("micrograph_no").loc[first.ids, "technique_family"]
    assert families.nunique() == min(6, records["technique_family"].nunique())
    for g in (first, again, other):
        _close(g)


def _panel_rows(gallery, width: int) -> list[list[int]]:
    ids = [int(re.search(r"#(\d+)", ax.get_title()).group(1)) for ax in gallery.figure.axes]
    return [ids[i : i + width] for i in range(0, len(ids), width)]


def test_retrieval_neighbours_are_nearest_from_other_specimens(records):
    # Every record is a query: 16 rows (not the sample's 60, 8 s of drawing), led by the two
    # specimens with two images each, so a query has a twin that must be excluded.
    twins = records["specimen_group"].duplicated(keep=False)
    records = pd.concat([records[twins], records[~twins].head(12)], ignore_index=True)
    rng = np.random.default_rng(0)
    ids = records["micrograph_no"].to_numpy()
    features = rng.normal(size=(len(ids), 8))
    query = records.iloc[0]
    twin = (records["specimen_group"] == query["specimen_group"]).to_numpy()
    features[twin] = features[0]  # its own specimen would be nearest: must be excluded
    close = np.flatnonzero(~twin)[:2]
    features[close[0]] = features[0] + 0.001
    features[close[1]] = features[0] + 0.01 * rng.normal(size=8)
    gallery = galleries.retrieval_panels(records, ids, features, n_queries=len(ids), k=2)
    rows = {row[0]: row[1:] for row in _panel_rows(gallery, 3)}
    assert rows[int(query["micrograph_no"])] == [int(ids[close[0]]), int(ids[close[1]])]
    table = records.set_index("micrograph_no")
    for q, neighbours in rows.items():
        groups = table.loc[neighbours, "specimen_group"]
        assert (groups != table.loc[q, "specimen_group"]).all()
    assert "cosine" in _texts(gallery.figure)
    _close(gallery)


def test_confident_mistakes_show_the_most_confident_wrong_answers(records):
    labelled = records[records["technique_family"].isin(taxonomy.TECHNIQUE_FAMILIES)]
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(5), len(labelled))
    predictions = answer_galleries.predictions_from_probabilities(
        labelled["micrograph_no"],
        probabilities,
        taxonomy.TECHNIQUE_FAMILIES,
        labelled["technique_family"],
    )
    # one class predicted perfectly: its row must say "no mistakes"
    perfect = predictions["truth"] == "TEM"
    predictions.loc[perfect, "prediction"] = "TEM"
    gallery = answer_galleries.confident_mistakes(
        records, predictions, "probe", per_class=2, classes=taxonomy.TECHNIQUE_FAMILIES
    )
    wrong = predictions[predictions["prediction"] != predictions["truth"]]
    expected = []
    for cls in taxonomy.TECHNIQUE_FAMILIES:
        top = wrong[wrong["truth"] == cls].sort_values("confidence", ascending=False).head(2)
        expected += top["micrograph_no"].tolist()
    assert gallery.ids == expected
    text = _texts(gallery.figure)
    assert "no mistakes" in text and "✗" in text
    assert f"({len(wrong)} wrong, of {len(predictions)})" in text
    _close(gallery)
    # abstentions are neither mistakes nor hidden: the title counts them apart
    abstained = predictions.assign(prediction=None)
    abstained.loc[abstained.index[:2], "prediction"] = "AFM"
    n_wrong = int((abstained["truth"].iloc[:2] != "AFM").sum())
    gallery = answer_galleries.confident_mistakes(records, abstained, "probe")
    n_none = len(abstained) - 2
    text = " ".join(_texts(gallery.figure).split())
    assert f"({n_wrong} wrong, {n_none} no answer, of {len(abstained)})" in text
    n_sem = int((abstained["truth"].iloc[2:] == "SEM").sum())
    assert f"no mistakes (n={int((abstained['truth'] == 'SEM').sum())}, {n_sem} no answer)" in text
    _close(gallery)


def test_predictions_from_a_long_score_table():
    scores = pd.DataFrame(
        {
            "micrograph_no": [1, 1, 2, 2, 3, 3],
            "class": ["SEM", "TEM"] * 3,
            "probability": [0.9, 0.1, 0.3, 0.7, 0.5, 0.5],
        }
    )
    truth = pd.Series({1: "SEM", 2: "SEM"})  # image 3 has no label: left out
    table = answer_galleries.predictions_from_scores(scores, truth)
    assert table["micrograph_no"].tolist() == [1, 2]
    assert table["prediction"].tolist() == ["SEM", "TEM"]
    assert table["confidence"].tolist() == pytest.approx([0.9, 0.7])


def test_descriptions_sit_beside_the_expert_text(records):
    answers = pd.DataFrame(
        {
            "micrograph_no": records["micrograph_no"].head(3).tolist() * 2,
            "model": ["model-a"] * 3 + ["model-b"] * 3,
            "text": ["a lamellar eutectic seen in SEM"] * 6,
        }
    )
    gallery = answer_galleries.descriptions(records, answers, n=2, labels=["random weights"])
    text = _texts(gallery.figure)
    assert len(gallery.ids) == 2 and "[RANDOM WEIGHTS]" in text
    row = records.set_index("micrograph_no").loc[gallery.ids[0]]
    assert "EXPERT: " + row["brief_description"][:20] in text
    assert "model-a: a lamellar" in text and "model-b: a lamellar" in text
    _close(gallery)


def test_a_long_run_of_wide_letters_stays_inside_the_figure(records):
    # a random-weight model's answer: one "word" of hundreds of m's, the widest letter
    answers = pd.DataFrame(
        {"micrograph_no": [records["micrograph_no"].iloc[0]], "model": ["m"], "text": ["m" * 600]}
    )
    gallery = answer_galleries.descriptions(records, answers, n=1)
    figure = gallery.figure
    renderer = figure.canvas.get_renderer()
    right = max(t.get_window_extent(renderer).x1 for ax in figure.axes for t in ax.texts)
    assert right <= figure.bbox.x1
    _close(gallery)


def test_disagreements_and_cascade_handoffs(records):
    ids = records["micrograph_no"].head(6).tolist()
    truth = records["technique_family"].head(6).tolist()
    same = pd.DataFrame({"micrograph_no": ids, "truth": truth, "prediction": truth})
    long = pd.concat(
        [
            same.assign(method="clip"),
            same.assign(method="vlm", prediction=[truth[0], None, *truth[2:]]),
        ]
    )
    gallery = answer_galleries.disagreements(records, long)
    assert gallery.ids == [ids[1]]  # only the abstention differs
    assert "vlm: no answer" in _texts(gallery.figure)
    _close(gallery)
    cascade = pd.DataFrame(
        {
            "micrograph_no": ids,
            "truth": truth,
            "clip_prediction": truth,
            "clip_confidence": np.linspace(0.1, 0.9, 6),
            "vlm_prediction": ["SEM"] * 6,
            "sent": [True, True, False, False, False, False],
        }
    )
    gallery = answer_galleries.cascade_handoffs(records, cascade)
    assert sorted(gallery.ids) == sorted(ids[:2])
    assert "→ VLM: SEM" in _texts(gallery.figure) and "(2 of 6;" in _texts(gallery.figure)
    _close(gallery)


def test_an_undecodable_image_is_a_captioned_cell_not_a_crash(records, tmp_path):
    broken = tmp_path / "000001.jpg"
    broken.write_bytes(b"not an image")
    bad = records.head(1).assign(image_path=str(broken))
    gallery = galleries.record_preview(bad, n=1)
    assert "cannot decode" in _texts(gallery.figure)
    _close(gallery)


def test_the_cascade_figure_draws_each_pair_in_its_legend_colour_in_every_panel():
    from microqa.compare.figures import cascade_figure

    rows = []
    for task in ("technique", "category", "technique_coarse"):
        for base in ("CLIP zero-shot", "CLIP logistic probe (reference ViT-B/32)", "CLIP 5-NN"):
            for vlm in ("Qwen3-VL-8B-Instruct", "llava-v1.6-mistral-7b-hf"):
                for f in np.linspace(0, 1, 5):  # the two VLMs' curves coincide (random weights)
                    rows.append((task, base, vlm, f, 1 - f, 0.5 * (1 - f)))
    curves = pd.DataFrame(
        rows,
        columns=["task", "base", "vlm", "fraction_to_vlm", "accuracy", "balanced_accuracy"],
    )
    fig = cascade_figure(curves, "CLIP → VLM cascade [RANDOM WEIGHTS]")
    legend = {
        t.get_text(): h
        for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)
    }
    assert len(legend) == 6
    styles = set()
    for ax in fig.axes:
        assert len(ax.lines) == 6
        widths = [line.get_linewidth() for line in ax.lines]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # under, wider
        for line in ax.lines:
            handle = legend[line.get_label()]
            assert line.get_color() == handle.get_color()
            assert line.get_linestyle() == handle.get_linestyle()
            styles.add((line.get_color(), line.get_linestyle()))
    assert len(styles) == 6  # six pairs, six looks
    _close(fig)
