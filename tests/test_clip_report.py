"""clip.report and clip.outputs: the category hit view, per-class tables, status and figure
titles naming models by name and weights identity, the stage's files written and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microqa import clip, metrics
from microqa.clip import outputs
from microqa.data import taxonomy
from tests.test_clip_zero_shot import planted_study


def test_category_hit_view_counts_any_material_of_the_record():
    assert clip.material_set(("Composite", "Polymer", "Polymer composite")) == {
        taxonomy.COMPOSITE,
        taxonomy.POLYMER,
    }
    assert clip.material_set(("Foam", "Metal or alloy", "Metal or alloy composite foam")) == {
        taxonomy.METAL,
        taxonomy.COMPOSITE,
    }
    assert clip.material_set(("Oxide",)) == {taxonomy.CERAMIC}
    assert clip.material_set(("Device",)) == set()


def test_per_class_table_reports_the_cross_fitted_sets_on_every_labelled_image():
    df, split, scores, evaluate = planted_study()
    best = clip.choose_prompt_sets(scores, df, split)
    table = clip.per_class_tables(scores, df, split, best)
    assert set(table["prompt_set"]) == {clip.CROSS_FITTED}
    assert table["n"].sum() == len(df)
    assert set(table["class"]) <= set(taxonomy.TECHNIQUE_FAMILIES)
    crossed = clip.cross_fitted_predictions(scores, df, split, best)
    truth = df.set_index("micrograph_no").loc[crossed["micrograph_no"], "technique_family"]
    recall = table.set_index("class")["recall"]
    for family in recall.index:  # recall of the published predictions, recomputed by hand
        rows = (truth == family).to_numpy()
        assert recall[family] == pytest.approx((crossed["predicted"][rows] == family).mean())


def _run_with_random_stand_in() -> clip.ZeroShotRun:
    identity = clip.ModelIdentity(
        "ViT-B-32:openai",
        "ViT-B-32-quickgelu",
        "random",
        "sha256:" + "0" * 64,
        weights_file=Path("/machine/specific/data/models/stand-in.safetensors"),
        seed=0,
        substitute=True,
    )
    return clip.ZeroShotRun(
        pd.DataFrame(columns=clip.SCORE_COLUMNS),
        {"ViT-B-32:openai": "random", "hf-hub:org/x": "skipped:not cached"},
        {"ViT-B-32:openai": {"seconds_per_image": 0.1, "device": "cpu", "n": 3}},
        models={"ViT-B-32:openai": identity},
    )


def test_status_and_titles_name_the_model_and_its_weights_never_a_path(tmp_path):
    run = _run_with_random_stand_in()
    status = clip.status_table(run)
    loaded_as = status.set_index("model")["loaded as"]
    assert loaded_as["ViT-B-32:openai"] == "ViT-B-32:openai (random weights, seed 0)"
    assert status.set_index("model").loc["hf-hub:org/x", "reason"] == "not cached"

    from PIL import Image

    image = tmp_path / "images" / "000001.png"
    image.parent.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(image)
    df = pd.DataFrame(
        {"micrograph_no": [1], "image_path": [str(image)], "technique_family": ["SEM"]}
    )
    hits = pd.DataFrame(
        {
            "rank": [1],
            "micrograph_no": [1],
            "cosine": [0.3],
            "query": ["a fracture surface"],
            "model": ["ViT-B-32:openai"],
            "weights": ["random"],
            "model_label": [run.label("ViT-B-32:openai")],
        }
    )
    fig = clip.search_figure(hits, df, ["random weights"])
    title = " ".join(fig._suptitle.get_text().split())  # wrapped to the figure's width
    assert "ViT-B-32:openai (random weights, seed 0)" in title
    assert "/machine" not in title and str(tmp_path) not in title


def test_outputs_round_trip_through_the_one_module(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    assert outputs.directory() == tmp_path / "build" / "clip"
    df, split, scores, _ = planted_study(20)
    best = clip.choose_prompt_sets(scores, df, split)
    run = clip.ZeroShotRun(scores, {"planted": "random"}, {"planted": {"n": 1}})
    written = clip.write_outputs(run, best)
    assert set(written) == {"zero_shot", "best", "timing", "failures"}
    back = outputs.read_scores("zero_shot")
    assert list(back.columns) == outputs.SCORE_COLUMNS and len(back) == len(scores)
    assert list(outputs.read_csv_or_empty("best").columns) == outputs.BEST_COLUMNS
    assert outputs.read_timing() == {"planted": {"n": 1}}
    assert outputs.read_failures().empty
    with pytest.raises(FileNotFoundError, match="probe_scores.csv"):
        outputs.read_scores("probe")
    outputs.write_features(
        np.array([3, 1]), np.eye(2), source="x (random weights)", pretrained=False
    )
    ids, emb, meta = outputs.read_features()
    assert ids.tolist() == [3, 1] and np.array_equal(emb, np.eye(2))
    assert meta == {"source": "x (random weights)", "pretrained": False}


def test_fast_bootstrap_metrics_agree_with_scikit_learn():
    """The fast bootstrap kernels behind every CI of the zero-shot tables."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k = int(rng.integers(5, 200)), int(rng.integers(2, 6))
        labels = list("abcdef"[:k])
        y = np.asarray(rng.choice(labels, n), dtype=object)
        p = metrics.clean_predictions(list(rng.choice(labels + [None], n)))
        codes = metrics.LabelCodes(y, p)
        for _ in range(10):
            i = rng.integers(0, n, n)
            assert codes.accuracy(i) == pytest.approx(metrics.accuracy(y[i], p[i]))
            assert codes.balanced_accuracy(i) == pytest.approx(
                metrics.balanced_accuracy(y[i], p[i])
            )
            assert codes.macro_f1(i) == pytest.approx(metrics.macro_f1(y[i], p[i]))
