"""Comparison and hybrids on planted CLIP scores and VLM answers whose right answers are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from microqa import comparison, dataset, taxonomy

CLASSES = taxonomy.TASKS["technique"][1]


def planted(tmp_path, n=200, seed=0):
    """CLIP is right exactly when confident (margin high); the VLM is right on 90% of images."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(CLASSES, n, p=[0.3, 0.2, 0.1, 0.25, 0.15])
    ids = np.arange(1, n + 1)
    df = pd.DataFrame(
        {
            "micrograph_no": ids,
            "technique_family": truth,
            "technique_coarse": [taxonomy.coarse_class(t) for t in truth],
            "primary_category": None,
            "specimen_group": [f"specimen {i // 2}" for i in ids],  # pairs of near-duplicates
        }
    )
    confident = rng.random(n) < 0.6
    zs, answers = [], []
    for i, t, ok in zip(ids, truth, confident, strict=True):
        guess = t if ok else rng.choice([c for c in CLASSES if c != t])
        probs = np.full(len(CLASSES), 0.05 if ok else 0.18)
        probs[CLASSES.index(guess)] = 0.8 if ok else 0.28
        probs /= probs.sum()
        zs += [
            {
                "micrograph_no": i,
                "model": "ViT-B-32:openai",
                "weights": "random",
                "task": "technique",
                "prompt_set": "ensemble",
                "class": c,
                "probability": p,
            }
            for c, p in zip(CLASSES, probs, strict=True)
        ]
        vlm_ok = rng.random() < 0.9
        vlm_pred = t if vlm_ok else rng.choice([c for c in CLASSES if c != t])
        vprobs = {c: (0.7 if c == vlm_pred else 0.075) for c in CLASSES}
        answers.append(
            {
                "micrograph_no": i,
                "model": "tiny-qwen",
                "backend": "hf",
                "weights": "random",
                "task": "technique",
                "context": "none",
                "mode": "score",
                "prompt_set": "study",
                "permutation": "ABCDE",
                "truth": t,
                "prediction": vlm_pred,
                "probabilities": json.dumps(vprobs),
                "latency_s": 2.0,
                "visual_tokens": 256,
                "raw_text": "",
                "cached": False,
            }
        )
    clip_dir, vlm_dir = tmp_path / "clip", tmp_path / "vlm"
    clip_dir.mkdir()
    vlm_dir.mkdir()
    pd.DataFrame(zs).to_csv(clip_dir / "zero_shot_scores.csv", index=False)
    pd.DataFrame(
        [{"model": "ViT-B-32:openai", "task": "technique", "prompt_set": "ensemble"}]
    ).to_csv(clip_dir / "best_prompt_sets.csv", index=False)
    pd.DataFrame(answers).to_csv(vlm_dir / "answers.csv", index=False)
    timing = {"ViT-B-32:openai": {"seconds_per_image": 0.1}}
    (clip_dir / "timing.json").write_text(json.dumps(timing))
    paths = {
        "zero_shot": clip_dir / "zero_shot_scores.csv",
        "probe": clip_dir / "absent.csv",
        "best": clip_dir / "best_prompt_sets.csv",
        "timing": clip_dir / "timing.json",
        "answers": vlm_dir / "answers.csv",
    }
    return df, paths, confident


def test_cascade_sends_unconfident_images_and_beats_both_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    df, paths, confident = planted(tmp_path)
    split = dataset.selection_split(df, seed=0)
    result = comparison.compare(df, split, paths=paths, n_boot=100)
    table = result.table.set_index("kind")
    clip_acc = table.loc["clip_zero_shot", "accuracy"]
    vlm_acc = table.loc["vlm", "accuracy"]
    cascade = table.loc["cascade"]
    assert cascade["accuracy"] > max(clip_acc, vlm_acc)
    # the threshold chosen on the select half routes about the unconfident 40% to the VLM
    assert cascade["fraction_to_vlm"] == pytest.approx(1 - confident.mean(), abs=0.12)
    assert cascade["seconds_per_image"] == pytest.approx(0.1 + cascade["fraction_to_vlm"] * 2.0)
    # every row reports on the same evaluation images, with provenance
    assert result.table["n"].nunique() == 1
    evaluate_n = int((split == "evaluate").sum())
    assert result.table["n"].iloc[0] == evaluate_n
    assert result.table["provenance"].str.contains("weights: random").all()
    curve = result.curves
    assert curve["fraction_to_vlm"].min() == 0.0 and curve["fraction_to_vlm"].max() == 1.0
    assert set(result.choices["hybrid"]) == {"cascade", "fusion"}


def test_choices_never_see_the_evaluation_half(tmp_path, monkeypatch):
    """Corrupting the VLM on the evaluation half must not change the chosen threshold."""
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    df, paths, _ = planted(tmp_path)
    split = dataset.selection_split(df, seed=0)
    before = comparison.compare(df, split, paths=paths, n_boot=20).choices
    answers = pd.read_csv(paths["answers"])
    evaluate_ids = set(df.loc[split == "evaluate", "micrograph_no"])
    answers.loc[answers["micrograph_no"].isin(evaluate_ids), "prediction"] = "AFM"
    answers.to_csv(paths["answers"], index=False)
    after = comparison.compare(df, split, paths=paths, n_boot=20).choices
    pd.testing.assert_frame_equal(before, after)


def test_fusion_weight_extremes_reproduce_each_part():
    ids = pd.Index([1, 2, 3])
    a = pd.DataFrame([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], index=ids, columns=["x", "y"])
    b = pd.DataFrame([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9]], index=ids, columns=["x", "y"])
    ma = comparison.Method("a", "clip_zero_shot", "technique", "a", comparison._argmax(a), a)
    mb = comparison.Method("b", "vlm", "technique", "b", comparison._argmax(b), b)
    assert list(comparison.fuse(ma, mb, 1.0).predictions) == list(ma.predictions)
    assert list(comparison.fuse(ma, mb, 0.0).predictions) == list(mb.predictions)


def test_published_numbers_are_marked_and_carry_their_n():
    table = comparison.published_rows()
    assert (table["kind"] == "published").all()
    assert table["n"].gt(0).all() and table["protocol"].str.len().gt(10).all()
