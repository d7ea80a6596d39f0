"""Every figure the study draws reads at page width (tests/figure_checks.py): the VLM stage's,
the CLIP stage's and the comparison's figures on small synthetic inputs shaped like a full
run (two models, three contexts, every task). The EDA figures, the calibration figures and the
galleries are checked where their own tests draw them (test_eda, test_compare_calibration,
test_galleries)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from microqa import clip
from microqa.clip import embedding_space
from microqa.clip import figures as clip_figures
from microqa.data import taxonomy
from microqa.report import plots
from microqa.vlm import figures as vlm_figures
from microqa.vlm.questions import CONTEXTS, DEFAULT_JOBS
from tests.figure_checks import assert_readable, unreadable

MODELS = ("Qwen/Qwen3-VL-8B-Instruct", "llava-hf/llava-v1.6-mistral-7b-hf")
LABELS = ["sample data", "random CLIP weights in context", "random weights"]  # as in a smoke run


@pytest.fixture(autouse=True)
def study_style():
    """The style every notebook draws with (logs.notebook_setup), undone afterwards."""
    import matplotlib as mpl

    with mpl.rc_context():
        plots.set_style()
        yield


def _decided(seed: int = 0) -> pd.DataFrame:
    """Decisions of two models in three contexts on every job, some of them no answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, prompt_set in DEFAULT_JOBS:
        classes = list(taxonomy.TASKS[task][1])
        for model in MODELS:
            for context in CONTEXTS:
                for i in range(40):
                    truth = classes[i % len(classes)]
                    said = rng.choice([*classes, None])
                    rows.append((model, context, task, prompt_set, truth, said))
    return pd.DataFrame(
        rows, columns=["model", "context", "task", "prompt_set", "truth", "prediction"]
    )


@pytest.mark.parametrize("contexts", [("none",), CONTEXTS])
@pytest.mark.parametrize(("task", "prompt_set"), DEFAULT_JOBS)
def test_vlm_confusion_figures_read_at_page_width(task, prompt_set, contexts):
    decided = _decided()
    decided = decided[decided["context"].isin(contexts)]
    fig = vlm_figures.confusion_figure(decided, task, prompt_set, LABELS)
    assert_readable(fig)


def test_vlm_accuracy_figure_reads_at_page_width():
    qa = (
        _decided()
        .groupby(["model", "context", "task", "prompt_set"], sort=False)
        .apply(lambda g: (g["truth"] == g["prediction"]).mean(), include_groups=False)
        .rename("accuracy")
        .reset_index()
    )
    qa = qa.assign(accuracy_ci_low=qa["accuracy"] - 0.1, accuracy_ci_high=qa["accuracy"] + 0.1)
    assert_readable(vlm_figures.accuracy_figure(qa, LABELS))


def test_the_check_finds_overlapping_and_tiny_text():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(30, 3))  # 4500 px shown at 1200: 12 pt reads as 6.7 px
    ax.set_title("a title")
    ax.text(0.5, 0.5, "here")
    ax.text(0.5, 0.5, "here too")
    image = ax.imshow(np.zeros((8, 8)), extent=(0, 1, 0, 1))  # set aside while text is placed
    problems = unreadable(fig)
    assert image.get_visible()  # and drawn again afterwards
    plt.close(fig)
    assert any("'here' overlaps 'here too'" in p for p in problems)
    assert any(p.startswith("'a title' is") for p in problems)


def _features(n: int = 60) -> embedding_space.FeatureSet:
    rng = np.random.default_rng(0)
    families = [*taxonomy.TECHNIQUE_FAMILIES, "Other"]
    categories = [*taxonomy.TASKS["category"][1], None]
    records = pd.DataFrame(
        {
            "micrograph_no": range(n),
            "technique_family": [families[i % len(families)] for i in range(n)],
            "primary_category": [categories[i % len(categories)] for i in range(n)],
            "specimen_id": [f"s{i // 2}" for i in range(n)],
        }
    )
    x = rng.normal(size=(n, 8))
    return embedding_space.FeatureSet(
        "ViT-B-32:openai (random weights)", False, records, x / np.linalg.norm(x, axis=1)[:, None]
    )


def test_clip_embedding_map_reads_at_page_width():
    features = _features()
    coords = np.random.default_rng(1).normal(size=(len(features.records), 2))
    assert_readable(embedding_space.umap_figure(features, coords))


def test_clip_learning_curve_reads_at_page_width():
    curve = pd.DataFrame(
        [
            (source, k, 0.3 + 0.05 * k, 0.02, 0.4 + 0.04 * k)
            for source in ("reference ViT-B/32 (pretrained)", "ViT-B-32:openai (random weights)")
            for k in (2, 4, 8, 16)
        ],
        columns=[
            "features",
            "labels_per_class",
            "balanced_accuracy",
            "balanced_accuracy_sd",
            "accuracy",
        ],
    )
    assert_readable(clip_figures.learning_curve_figure(curve, LABELS))


def test_clip_confusion_reads_at_page_width():
    from tests.test_clip_zero_shot import planted_study

    df, split, scores, _ = planted_study(40)
    best = clip.choose_prompt_sets(scores, df, split)
    model = scores["model"].iloc[0]
    assert_readable(clip.confusion_figure(scores, df, split, best, model, LABELS))


def test_clip_search_figure_reads_at_page_width(tmp_path):
    from PIL import Image

    paths = []
    for i in range(5):
        path = tmp_path / f"{i:06d}.png"
        Image.new("RGB", (80 + 20 * i, 60), (10 * i, 20, 30)).save(path)
        paths.append(str(path))
    df = pd.DataFrame(
        {
            "micrograph_no": range(5),
            "image_path": paths,
            "technique_family": ["Optical (transmitted)", "SEM", "TEM", "AFM", "SEM"],
        }
    )
    hits = pd.DataFrame(
        {
            "rank": range(1, 6),
            "micrograph_no": range(5),
            "cosine": np.linspace(0.31, 0.27, 5),
            "query": "a dendritic microstructure in a cast alloy",
            "model": "ViT-B-32:openai",
            "model_label": "ViT-B-32:openai (random weights, seed 0)",
        }
    )
    assert_readable(clip.search_figure(hits, df, LABELS))


def test_the_cascade_figure_reads_at_page_width():
    from microqa.compare.figures import cascade_figure

    rows = [
        (task, base, vlm, f, 1 - f, 0.5 * (1 - f))
        for task in ("technique", "category", "technique_coarse")
        for base in ("CLIP zero-shot", "CLIP logistic probe (reference ViT-B/32)")
        for vlm in ("Qwen3-VL-8B-Instruct", "llava-v1.6-mistral-7b-hf")
        for f in np.linspace(0, 1, 5)
    ]
    columns = ["task", "base", "vlm", "fraction_to_vlm", "accuracy", "balanced_accuracy"]
    curves = pd.DataFrame(rows, columns=columns)
    assert_readable(cascade_figure(curves, "CLIP → VLM cascade [SAMPLE DATA; RANDOM WEIGHTS]"))
