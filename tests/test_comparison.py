"""Comparison and hybrids on planted CLIP scores and VLM answers whose right answers are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from microqa import comparison, hybrids, methods, metrics, splits, stats, taxonomy

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
            "brief_description": [f"specimen {i // 2}" for i in ids],
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
                "rotation": 0,
                "letter_mass": 0.9,
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


def _compare(tmp_path, monkeypatch, **kwargs):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    df, paths, confident = planted(tmp_path)
    return df, paths, confident, comparison.compare(df, paths=paths, n_boot=50, **kwargs)


def test_every_labelled_image_is_evaluated_once_and_the_cascade_beats_both_parts(
    tmp_path, monkeypatch
):
    df, _, confident, result = _compare(tmp_path, monkeypatch)
    table = result.table.set_index("kind")
    assert (result.table["n"] == len(df)).all()  # pooled out-of-fold: all 200 images
    assert set(result.table["subset"]) == {"all labelled"}  # no category task here
    cascade = table.loc["cascade"]
    assert cascade["accuracy"] > max(
        table.loc["clip_zero_shot", "accuracy"], table.loc["vlm", "accuracy"]
    )
    assert cascade["fraction_to_vlm"] == pytest.approx(1 - confident.mean(), abs=0.12)
    assert cascade["seconds_per_image"] == pytest.approx(0.1 + cascade["fraction_to_vlm"] * 2.0)
    assert result.table["provenance"].str.contains("weights: random").all()
    curve = result.curves
    assert curve["fraction_to_vlm"].min() == 0.0 and curve["fraction_to_vlm"].max() == 1.0
    # one choice per held-out fold and kind, each made on the other fold's images
    folds = splits.assign_folds(df)
    for kind in ("cascade", "fusion"):
        rows = result.choices[result.choices["kind"] == kind].set_index("held_out_fold")
        assert sorted(rows.index) == [0, 1]
        assert rows.loc[0, "n_chosen_on"] == int((folds == 1).sum())


def test_each_fold_is_chosen_without_its_own_labels(tmp_path, monkeypatch):
    """Corrupting the VLM on fold 1 must leave every choice for fold 1 (made on fold 0) as it
    was: a threshold or weight chosen on the evaluated fold would move."""
    df, paths, _, before = _compare(tmp_path, monkeypatch)
    answers = pd.read_csv(paths["answers"])
    fold_1 = set(df.loc[splits.assign_folds(df) == 1, "micrograph_no"])
    answers.loc[answers["micrograph_no"].isin(fold_1), "prediction"] = "AFM"
    answers.loc[answers["micrograph_no"].isin(fold_1), "probabilities"] = json.dumps(
        {c: (0.96 if c == "AFM" else 0.01) for c in CLASSES}
    )
    answers.to_csv(paths["answers"], index=False)
    after = comparison.compare(df, paths=paths, n_boot=20).choices
    held_1 = before.choices["held_out_fold"] == 1
    pd.testing.assert_frame_equal(
        before.choices[held_1].reset_index(drop=True),
        after[after["held_out_fold"] == 1].reset_index(drop=True),
    )
    assert not before.choices[~held_1].equals(after[after["held_out_fold"] == 0])


def _method(kind, probs, **identity):
    return methods.Method(
        kind, "technique", identity.pop("model", kind), methods.argmax(probs), probs, **identity
    )


def test_fusion_weight_extremes_reproduce_each_part_and_the_best_weight_wins():
    ids = pd.Index([1, 2, 3, 4])
    a = pd.DataFrame(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], index=ids, columns=["x", "y"]
    )
    b = pd.DataFrame(
        [[0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]], index=ids, columns=["x", "y"]
    )
    ma, mb = _method("clip_zero_shot", a), _method("vlm", b)
    assert list(hybrids.fuse(ma, mb, 1.0).predictions) == list(ma.predictions)
    assert list(hybrids.fuse(ma, mb, 0.0).predictions) == list(mb.predictions)
    for truth in (["x", "y", "x", "y"], ["y", "x", "y", "y"]):  # CLIP right; the VLM right
        truth = pd.Series(truth, index=ids)
        score = {
            w: metrics.balanced_accuracy(truth, list(hybrids.fuse(ma, mb, w).predictions))
            for w in hybrids.FUSION_WEIGHTS
        }
        best = max(score.values())
        tied = [w for w, v in score.items() if v == best]
        assert min(score.values()) < best  # the weight matters here
        chosen = hybrids.choose_fusion_weight(ma, mb, truth)
        assert score[chosen] == best and chosen == min(tied, key=lambda w: abs(w - 0.5))


def test_cascade_uses_the_margin_not_the_top_probability():
    probs = pd.DataFrame([[0.5, 0.45, 0.05], [0.4, 0.3, 0.3]], columns=["x", "y", "z"])
    assert list(hybrids.confidence(probs)) == pytest.approx([0.05, 0.1])
    assert list(hybrids.confidence(probs, "top")) == pytest.approx([0.5, 0.4])
    clip = _method("clip_zero_shot", probs)
    vlm = _method("vlm", pd.DataFrame([[0, 1, 0], [0, 0, 1]], columns=["x", "y", "z"]))
    sent = hybrids.apply_cascade(clip, vlm, threshold=0.08)
    assert list(sent.predictions) == ["y", "x"]  # first image (margin 0.05) goes to the VLM
    assert sent.notes["fraction_to_vlm"] == 0.5


def test_threshold_choice_is_the_best_and_cheapest():
    curve = pd.DataFrame(
        {
            "threshold": [-np.inf, 0.1, 0.2, np.inf],
            "fraction_to_vlm": [0.0, 0.3, 0.6, 1.0],
            "balanced_accuracy": [0.5, 0.8, 0.8, 0.6],
        }
    )
    assert hybrids.choose_threshold(curve) == 0.1


def test_labels_are_derived_from_identity_and_pairs_found_by_identity():
    ids = pd.Index([1, 2])
    p = pd.DataFrame([[0.9, 0.1], [0.2, 0.8]], index=ids, columns=["x", "y"])
    zs = _method("clip_zero_shot", p, model="ViT-B-32:openai", prompt_set="cross-fitted")
    probe = _method(
        "clip_probe", p, model="reference ViT-B/32 (pretrained)", prompt_set="knn-grouped-cv"
    )
    plain = _method("vlm", p, model="/somewhere/on/disk/Qwen2-VL-2B", context="none", mode="score")
    near = replace_context(plain, "clip_neighbours")
    other = _method("vlm", p, model="llava-hf/llava-v1.6", context="none", mode="score")
    cascade = hybrids.hybrid("cascade", zs, plain, zs.predictions, None, None)
    assert methods.label(plain.identity()) == "Qwen2-VL-2B"  # no machine path
    assert "supervised" in methods.label(near.identity())
    assert methods.label(cascade.identity()).startswith("cascade CLIP ViT-B-32:openai zero-shot")
    questions = {
        (q, a.kind, b.kind, b.model)
        for q, a, b in comparison.study_pairs([zs, probe, plain, near, other, cascade])
    }
    assert ("VLM with CLIP context vs without", "vlm", "vlm", plain.model) in questions
    assert ("one VLM vs another", "vlm", "vlm", other.model) in questions
    assert (
        "CLIP zero-shot vs CLIP probe",
        "clip_zero_shot",
        "clip_probe",
        probe.model,
    ) in questions
    assert (
        "retrieved expert metadata (VLM) vs k-NN probe",
        "vlm",
        "clip_probe",
        probe.model,
    ) in questions
    assert ("cascade vs its VLM alone", "cascade", "vlm", plain.model) in questions
    assert ("cascade vs its CLIP stage", "cascade", "clip_zero_shot", zs.model) in questions


def replace_context(method, context):
    from dataclasses import replace

    return replace(method, context=context)


def test_paired_table_differences_match_the_table_and_are_holm_corrected(tmp_path, monkeypatch):
    _, _, _, result = _compare(tmp_path, monkeypatch)
    paired, table = result.paired, result.table.set_index("label")
    assert {"cascade vs its VLM alone", "cascade vs its CLIP stage"} <= set(paired["question"])
    for row in paired.itertuples():
        expected = (
            table.loc[row.method_a, "balanced_accuracy"]
            - table.loc[row.method_b, "balanced_accuracy"]
        )
        assert row.balanced_accuracy_difference == pytest.approx(expected)
    assert (paired["p_bootstrap_holm"] >= paired["p_bootstrap"]).all()
    assert np.allclose(paired["p_mcnemar_holm"], stats.holm(paired["p_mcnemar"]))
    assert (paired["mdd_80"] > 0).all()


def test_published_numbers_are_marked_and_carry_their_n():
    table = comparison.published_rows()
    assert (table["kind"] == "published").all()
    assert table["n"].gt(0).all() and table["protocol"].str.len().gt(10).all()


def test_hybrid_mechanics_on_a_tiny_case():
    probs = pd.DataFrame(
        [[0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]],
        index=[1, 2, 3],
        columns=["x", "y", "z"],
    )
    vlm_p = pd.DataFrame(
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        index=[1, 2, 3],
        columns=["x", "y", "z"],
    )
    clip, vlm = _method("clip_zero_shot", probs), _method("vlm", vlm_p)
    at = hybrids.apply_cascade(clip, vlm, threshold=0.25)  # margins 0.5, 1, 0.25: none below
    assert at.kind == "cascade" and list(at.predictions) == ["x", "x", "x"]
    assert at.notes["fraction_to_vlm"] == 0.0
    assert list(hybrids.apply_cascade(clip, vlm, np.inf).predictions) == ["z", "y", "z"]
    assert list(hybrids.apply_cascade(clip, vlm, -np.inf).predictions) == ["x", "x", "x"]
    truth = pd.Series(["z", "x", "z"], index=[1, 2, 3])
    curve = hybrids.cascade_curve(clip, vlm, truth)
    assert list(curve["fraction_to_vlm"]) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert list(curve["accuracy"]) == pytest.approx([1 / 3, 2 / 3, 1.0, 2 / 3])
    assert hybrids.choose_threshold(curve) == 1.0  # below margin 1: rows 1 and 3 go
    fused = hybrids.fuse(clip, vlm, 0.5)  # zeros stay finite thanks to eps
    assert fused.kind == "fusion" and fused.probabilities is not None
    assert (
        np.allclose(fused.probabilities.sum(axis=1), 1)
        and np.isfinite(fused.probabilities).all().all()
    )
    assert fused.partner == vlm.model and fused.base == "clip_zero_shot"


def test_prompt_set_choice_and_cross_fit_use_the_other_fold():
    ids = pd.Index(range(8))
    truth = pd.Series(list("xyxyxyxy"), index=ids)
    folds = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=ids)
    good_first = pd.Series(list("xyxy") + list("yxyx"), index=ids)  # right on fold 0 only
    good_second = pd.Series(list("yxyx") + list("xyxy"), index=ids)  # right on fold 1 only
    one = methods.Method("clip_zero_shot", "technique", "m", good_first, prompt_set="one")
    two = methods.Method("clip_zero_shot", "technique", "m", good_second, prompt_set="two")
    candidates = {"one": one, "two": two}
    assert hybrids.choose_prompt_set(candidates, truth[folds == 0]) == "one"
    assert hybrids.choose_prompt_set(candidates, truth) == "one"  # a tie goes to name order

    def fit(train):
        chosen = hybrids.choose_prompt_set(candidates, train)
        return {"prompt_set": chosen}, candidates[chosen]

    pooled, rows = hybrids.cross_fit(truth, folds, fit, one)
    # fold 1 is predicted by the set chosen on fold 0 ("one"), and vice versa: all wrong
    assert (pooled.predictions != truth).all()
    assert [(r["held_out_fold"], r["prompt_set"], r["n_chosen_on"]) for r in rows] == [
        (0, "two", 4),
        (1, "one", 4),
    ]


def test_per_image_answers_and_cascade_handoffs_agree_with_the_pooled_methods(
    tmp_path, monkeypatch
):
    """The two frames the galleries of notebook 05 read: every method's answer per image, and
    per cascade which images went to the VLM, on CLIP's confidence and with the VLM's answer."""
    df, paths, confident, result = _compare(tmp_path, monkeypatch)
    answers, handoffs = result.predictions, result.handoffs
    assert set(answers["method"]) == set(result.table["label"])
    for method, rows in answers.groupby("method"):
        assert rows["micrograph_no"].is_unique and len(rows) == len(df)
        n = result.table.set_index("label").loc[method, "n"]
        right = (rows["prediction"] == rows["truth"]).mean()
        assert right == pytest.approx(result.table.set_index("label").loc[method, "accuracy"])
        assert len(rows) == n
    truth = df.set_index("micrograph_no")["technique_family"]
    assert (
        answers.set_index("micrograph_no")["truth"]
        == truth.loc[answers["micrograph_no"]].to_numpy()
    ).all()

    (cascade,) = result.table.loc[result.table["kind"] == "cascade", "label"]
    assert set(handoffs["method"]) == {cascade}
    handoffs = handoffs.set_index("micrograph_no").loc[df["micrograph_no"]]
    assert handoffs["sent"].mean() == pytest.approx(
        result.table.set_index("label").loc[cascade, "fraction_to_vlm"]
    )
    # the planted CLIP is confident (margin 0.75/1.05) exactly where it is right
    margin_confident = handoffs["clip_confidence"] > 0.3
    assert (margin_confident.to_numpy() == confident).all()
    assert not handoffs.loc[margin_confident, "sent"].any()  # confident images stay with CLIP
    assert (
        handoffs.loc[~handoffs["sent"], "clip_prediction"]
        == handoffs.loc[~handoffs["sent"], "truth"]
    ).all()
    # the cascade's answer is CLIP's where kept and the VLM's where sent
    said = answers[answers["method"] == cascade].set_index("micrograph_no")["prediction"]
    expected = handoffs["clip_prediction"].where(~handoffs["sent"], handoffs["vlm_prediction"])
    assert (said.loc[handoffs.index] == expected).all()

    shown = comparison.gallery_predictions(answers, "technique")
    assert set(shown["kind"]) == {"clip_zero_shot", "vlm"}


def test_a_fold_where_the_vlm_fails_and_clip_does_not_moves_only_the_other_folds_choices(
    tmp_path, monkeypatch
):
    """Leakage trap: on fold 1 the VLM becomes always wrong and CLIP right even where unsure,
    so on fold 1 alone no image should go to the VLM. Fold 1's cascade threshold and fusion
    weight are chosen on fold 0, whose data did not change, so they must not move; a choice
    that saw fold 1's labels would (sending images costs 40 right answers there)."""
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    df, paths, confident = planted(tmp_path)
    before = comparison.compare(df, paths=paths, n_boot=20).choices
    fold_1 = df.loc[splits.assign_folds(df) == 1, "micrograph_no"]
    truth = df.set_index("micrograph_no")["technique_family"]
    scores = pd.read_csv(paths["zero_shot"])
    unsure = set(fold_1[~confident[fold_1.index]])
    rows = scores["micrograph_no"].isin(unsure)
    right = scores["class"] == scores["micrograph_no"].map(truth)
    scores.loc[rows, "probability"] = np.where(right[rows], 0.28, 0.18)
    scores.to_csv(paths["zero_shot"], index=False)
    answers = pd.read_csv(paths["answers"])
    wrong = {t: next(c for c in CLASSES if c != t) for t in CLASSES}
    on_1 = answers["micrograph_no"].isin(set(fold_1))
    answers.loc[on_1, "prediction"] = answers.loc[on_1, "truth"].map(wrong)
    answers.loc[on_1, "probabilities"] = [
        json.dumps({c: (0.7 if c == p else 0.075) for c in CLASSES})
        for p in answers.loc[on_1, "prediction"]
    ]
    answers.to_csv(paths["answers"], index=False)
    after = comparison.compare(df, paths=paths, n_boot=20).choices
    held_1 = before["held_out_fold"] == 1
    pd.testing.assert_frame_equal(
        before[held_1].reset_index(drop=True),
        after[after["held_out_fold"] == 1].reset_index(drop=True),
    )
    moved = (
        before[~held_1]
        .reset_index(drop=True)
        .compare(after[after["held_out_fold"] == 0].reset_index(drop=True))
    )
    assert {"threshold", "weight"} <= set(moved.columns.get_level_values(0))
