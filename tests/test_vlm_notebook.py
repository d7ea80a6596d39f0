"""Notebook 04 in the smoke profile: the real notebook, executed by papermill after 01-03,
through the hf backend on the tiny random-weight stand-ins (the offline substitute)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from microqa.vlm import runner
from microqa.vlm.questions import DEFAULT_JOBS

MODELS = {"Qwen/Qwen3-VL-8B-Instruct", "llava-hf/llava-v1.6-mistral-7b-hf"}


@pytest.mark.notebooks
def test_notebook_04_smoke(smoke_pipeline):
    smoke_pipeline.run("04_vlm_qa")
    root = smoke_pipeline.root
    answers = runner.load_answers(root / "build" / "vlm" / "answers.csv")
    assert list(answers.columns) == runner.ANSWER_COLUMNS
    assert set(answers["model"]) == MODELS
    assert (answers["weights"] == "random").all() and (answers["backend"] == "hf").all()
    assert set(zip(answers["task"], answers["prompt_set"], strict=True)) == set(DEFAULT_JOBS)
    technique = answers[(answers["task"] == "technique") & (answers["context"] == "none")]
    assert technique.groupby("model").size().eq(12 * 5).all()  # smoke sample x 5 rotations
    # score mode: every answer carries a probability over its options
    for probs in answers["probabilities"]:
        assert sum(json.loads(probs).values()) == pytest.approx(1.0)

    tables, figures = root / "tables", root / "figures"
    qa = pd.read_csv(tables / "vlm_qa.csv")
    assert set(qa["model"]) == MODELS and qa["n"].gt(0).all()
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
