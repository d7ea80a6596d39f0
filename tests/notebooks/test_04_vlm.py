"""Notebook 04 in the smoke profile: the real notebook, executed by papermill after 01-03,
through the hf backend on the tiny random-weight stand-ins (the offline substitute): every
option order, the agreement subset in generate mode, and the tables of issue 11."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from microqa.data import taxonomy
from microqa.vlm import runner
from microqa.vlm.questions import DEFAULT_JOBS
from tests.conftest import SMOKE_TECHNIQUE_QUESTION

MODELS = {"Qwen/Qwen3-VL-8B-Instruct", "llava-hf/llava-v1.6-mistral-7b-hf"}


@pytest.mark.notebooks
def test_notebook_04_smoke(smoke_pipeline):
    smoke_pipeline.run("04_vlm_qa")
    root = smoke_pipeline.root
    every = runner.load_answers(root / "build" / "vlm" / "answers.csv", variant=None)
    answers = every[every["variant"] == "original"]
    assert list(answers.columns) == runner.ANSWER_COLUMNS
    assert set(answers["model"]) == MODELS
    assert (answers["weights"] == "random").all() and (answers["backend"] == "hf").all()
    assert set(zip(answers["task"], answers["prompt_set"], strict=True)) == set(DEFAULT_JOBS)
    technique = answers[(answers["task"] == "technique") & (answers["context"] == "none")]
    score = technique[technique["mode"] == "score"]
    # every image of the smoke sample (12) gets the open question; the technique question
    # goes to those with a technique family (photographs get the material questions only)
    described = runner.load_descriptions(root / "build" / "vlm" / "descriptions.csv")
    assert described.groupby("model")["micrograph_no"].nunique().eq(12).all()
    labelled = described[described["technique_truth"].isin(taxonomy.TECHNIQUE_FAMILIES)]
    n_technique = labelled.groupby("model")["micrograph_no"].nunique()
    assert n_technique.gt(6).all()
    assert score.groupby("model")["micrograph_no"].nunique().eq(n_technique).all()
    assert score.groupby("model").size().eq(n_technique * 5).all()  # all 5 rotations each
    # the agreement subset (half the sample) was also asked in generate mode
    generated = technique[technique["mode"] == "generate"]
    assert generated.groupby("model")["micrograph_no"].nunique().between(1, 6).all()
    assert set(generated["micrograph_no"]) <= set(score["micrograph_no"])
    # score mode: every answer carries a probability over its options
    for probs in answers.loc[answers["mode"] == "score", "probabilities"]:
        assert sum(json.loads(probs).values()) == pytest.approx(1.0)

    tables, figures = root / "tables", root / "figures"
    qa = pd.read_csv(tables / "vlm_qa.csv")
    assert set(qa["model"]) == MODELS and qa["n"].gt(0).all()
    assert {"letter_mass_mean", "unanswered_rate", "abstention_threshold"} <= set(qa.columns)
    assert set(qa["mode"]) == {"score", "generate"}
    bias = pd.read_csv(tables / "vlm_position_bias.csv")  # produced without permute_options
    assert set(bias["model"]) == MODELS and bias["chosen_share"].between(0, 1).all()
    agreement = pd.read_csv(tables / "vlm_score_generate_agreement.csv")
    assert set(agreement["model"]) == MODELS and agreement["n_images"].gt(0).all()
    assert agreement["generate_unparseable_rate"].between(0, 1).all()
    assert (tables / "vlm_rotation_effect.csv").is_file()
    thresholds = pd.read_csv(tables / "vlm_abstention_thresholds.csv")
    assert thresholds["threshold"].between(0, 1).all()
    assert "RANDOM WEIGHTS" in (tables / "vlm_qa.md").read_text(encoding="utf-8")
    assert "RANDOM WEIGHTS" in (tables / "vlm_descriptions.md").read_text(encoding="utf-8")
    tokens = pd.read_csv(tables / "vlm_visual_tokens.csv")
    assert {"qwen3_vl", "llava_next"} <= set(tokens["family"])
    for task, prompt_set in DEFAULT_JOBS:
        assert (figures / f"vlm_confusion_{task}_{prompt_set}.png").stat().st_size > 0
    assert (figures / "vlm_accuracy.png").is_file()
    record = json.loads((root / "build" / "provenance.json").read_text(encoding="utf-8"))
    assert record["vlm"]["weights"] == dict.fromkeys(MODELS, "random")
    assert len(record["vlm"]["fallbacks"]) == 2  # one loud substitute per model
    # the reworded technique question (a papermill parameter) is what the page shows as asked,
    # and provenance records it by content
    reworded = {"technique": {"question": SMOKE_TECHNIQUE_QUESTION}}
    assert record["vlm"]["overrides"]["vlm_questions"] == reworded
    page = (root / "notebooks" / "04_vlm_qa.ipynb").read_text(encoding="utf-8")
    assert f"> {SMOKE_TECHNIQUE_QUESTION}" in page
    assert "> Which imaging technique was used" not in page


@pytest.mark.notebooks
def test_notebook_04_controls_join_the_answers(smoke_pipeline):
    smoke_pipeline.run("04_vlm_qa")
    root = smoke_pipeline.root
    every = runner.load_answers(root / "build" / "vlm" / "answers.csv", variant=None)
    controls = every[every["variant"] != "original"]
    assert set(controls["variant"]) == {"blank", "hflip", "rot90", "gray", "masked"}
    # score mode, no CLIP context, the study's wording, by every model
    assert set(controls["mode"]) == {"score"} and set(controls["context"]) == {"none"}
    assert set(controls["prompt_set"]) == {"study"} and set(controls["model"]) == MODELS
    # the same robustness sample (smoke: 8 images) under every variant, inside the main sample
    images = controls.groupby("variant")["micrograph_no"].apply(frozenset)
    assert images.nunique() == 1 and len(images.iloc[0]) == 8
    original = every[every["variant"] == "original"]
    assert images.iloc[0] <= set(original["micrograph_no"])
    # each control asks what the original asked of those images, no more
    asked = original[
        (original["mode"] == "score")
        & (original["context"] == "none")
        & (original["prompt_set"] == "study")
        & original["micrograph_no"].isin(images.iloc[0])
    ]
    assert controls.groupby("variant").size().eq(len(asked)).all()
    record = json.loads((root / "build" / "provenance.json").read_text(encoding="utf-8"))
    assert record["vlm_variants"]["variants"] == ["blank", "hflip", "rot90", "gray", "masked"]
    assert sorted(record["vlm_variants"]["images"]) == sorted(images.iloc[0])
