"""Comparison and hybrids on planted CLIP scores and VLM answers whose right answers are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from microqa import metrics, stats
from microqa.compare import answers, comparison, family, hybrids, methods
from microqa.data import splits, taxonomy

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
    models = ~result.table["kind"].isin(["chance", "majority"])  # baselines use no weights
    assert result.table.loc[models, "provenance"].str.contains("weights: random").all()
    assert result.table.loc[~models, "provenance"].str.contains("weights: none").all()
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
    assert set(paired["family"]) <= {"primary", "exploratory"}
    for name in ("primary", "exploratory"):  # Holm within each family, never across both
        rows = paired[paired["family"] == name]
        assert np.allclose(
            rows["p_sign_flip_holm"], stats.holm(rows["p_sign_flip"]), equal_nan=True
        )
        assert np.allclose(
            rows["p_mcnemar_accuracy_holm"],
            stats.holm(rows["p_mcnemar_accuracy"]),
            equal_nan=True,
        )
        assert (rows["family_size"] == rows["p_sign_flip"].notna().sum()).all()
    assert result.paired_primary.equals(
        paired[paired["family"] == "primary"].reset_index(drop=True)
    )
    assert set(result.paired_primary["question"]) <= set(family.PRIMARY_QUESTIONS)
    assert not set(result.paired_exploratory["question"]) & set(family.PRIMARY_QUESTIONS)
    tested = paired[~paired["identical"]]
    assert (tested["mdd_80_corrected"] > tested["mdd_80"]).all()


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
    baseline = result.table["kind"].isin(["chance", "majority"])  # no answers of their own
    assert set(answers["method"]) == set(result.table.loc[~baseline, "label"])
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


def _answer(i, model="tiny-qwen", mode="score", probabilities="", **overrides):
    """One row of answers.csv (one rotation of one question)."""
    row = {
        "micrograph_no": i,
        "model": model,
        "backend": "hf",
        "weights": "random",
        "task": "technique",
        "context": "none",
        "mode": mode,
        "prompt_set": "study",
        "permutation": "ABCDE",
        "truth": "SEM",
        "prediction": max(probabilities, key=probabilities.get) if probabilities else "SEM",
        "probabilities": json.dumps(probabilities) if probabilities else "",
        "rotation": 0,
        "letter_mass": 0.9,
        "latency_s": 1.0,
        "visual_tokens": 100,
        "raw_text": "",
        "cached": False,
    }
    return {**row, **overrides}


def test_vlm_decisions_average_rotations_and_sum_their_cost(tmp_path):
    rows = [
        # image 1, two rotations: probabilities averaged, seconds summed, tokens averaged
        _answer(1, probabilities={"SEM": 0.6, "TEM": 0.4}, latency_s=1.0, visual_tokens=100),
        _answer(1, probabilities={"SEM": 0.8, "TEM": 0.2}, latency_s=2.0, rotation=1),
        _answer(2, probabilities={"AFM": 1.0}, latency_s=0.5, visual_tokens=50),
        _answer(2, probabilities={"AFM": 1.0}, latency_s=0.5, visual_tokens=70, rotation=1),
        _answer(1, mode="generate", prediction="TEM", latency_s=4.0),  # no probabilities
        _answer(3, probabilities={"SEM": 1.0}),  # not in the dataset's folds: ignored
    ]
    path = tmp_path / "answers.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    folds = pd.Series([0, 1], index=[1, 2])
    decided = answers.vlm_decisions(path, folds).set_index(["mode", "micrograph_no"])
    assert sorted(decided.index) == [("generate", 1), ("score", 1), ("score", 2)]
    score_1, score_2 = decided.loc[("score", 1)], decided.loc[("score", 2)]
    generated = decided.loc[("generate", 1)]
    assert score_1["probabilities"] == pytest.approx({"SEM": 0.7, "TEM": 0.3})
    assert (score_1["latency_s"], score_1["visual_tokens"]) == (3.0, 100)
    assert (score_2["latency_s"], score_2["visual_tokens"]) == (1.0, 60)
    assert score_2["prediction"] == "AFM"
    assert generated["probabilities"] is None and generated["prediction"] == "TEM"
    assert generated["latency_s"] == 4.0
    assert answers.vlm_decisions(tmp_path / "absent.csv", folds).empty


def _decision(i, model, task="technique", mode="score", probabilities=None, **overrides):
    row = {
        "model": model,
        "task": task,
        "context": "none",
        "mode": mode,
        "prompt_set": "study",
        "micrograph_no": i,
        "weights": "random",
        "prediction": max(probabilities, key=probabilities.get) if probabilities else "SEM",
        "probabilities": probabilities,
        "letter_mass": 0.9,
        "latency_s": 1.0,
        "visual_tokens": 100.0,
    }
    row = {**row, **overrides}
    # the answer before abstention: the prediction unless the row abstained (`choice` given)
    return {"choice": row["prediction"], **row}


def test_vlm_methods_answer_with_the_forced_choice_never_the_abstention():
    # image 2 abstained (low letter mass) after choosing AFM: the comparison, like the VLM
    # table's headline, scores the forced choice
    decisions = pd.DataFrame(
        [
            _decision(1, "v", probabilities={"SEM": 0.9, "TEM": 0.1}),
            _decision(2, "v", probabilities={"AFM": 0.6}, prediction=None, choice="AFM"),
        ]
    )
    (method,) = answers.vlm_methods(decisions)
    assert list(method.predictions) == ["SEM", "AFM"]


def test_vlm_methods_one_per_question_in_key_order_with_the_task_classes():
    decisions = pd.DataFrame(
        [  # listed out of order: methods come sorted by (model, task, context, mode, set)
            _decision(1, "b-vlm", probabilities={"TEM": 0.6, "SEM": 0.4}, visual_tokens=100.0),
            _decision(2, "b-vlm", probabilities={"AFM": 1.0}, visual_tokens=300.0, latency_s=3.0),
            _decision(1, "a-vlm", mode="generate", prediction="AFM", visual_tokens=np.nan),
            _decision(1, "a-vlm", task="material"),  # not a study task: skipped
            _decision(1, "a-vlm", probabilities={"SEM": 1.0}),
            _decision(2, "a-vlm", prediction=None),  # unanswered: no probabilities
        ]
    )
    found = answers.vlm_methods(decisions)
    assert [(m.model, m.mode) for m in found] == [
        ("a-vlm", "generate"),
        ("a-vlm", "score"),
        ("b-vlm", "score"),
    ]
    generated, partly_answered, scored = found
    assert all(m.kind == "vlm" and m.task == "technique" for m in found)
    assert all((m.weights, m.context, m.prompt_set) == ("random", "none", "study") for m in found)
    assert generated.probabilities is None and generated.visual_tokens is None
    assert list(generated.predictions) == ["AFM"]
    assert partly_answered.probabilities is None  # one image has none: no probability method
    # columns in the task's class order, classes a VLM never named at 0
    expected = pd.DataFrame(
        [[0.4, 0.6, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]], index=[1, 2], columns=CLASSES
    )
    pd.testing.assert_frame_equal(scored.probabilities, expected, check_names=False)
    assert scored.seconds_per_image == 2.0 and scored.visual_tokens == 200.0
    assert answers.vlm_methods(pd.DataFrame()) == []


def testhybrid_partners_are_the_plain_questions_in_the_study_wording():
    p = pd.DataFrame([[1.0, 0.0]], index=[1], columns=["x", "y"])
    plain = _method("vlm", p, model="q", context="none", prompt_set="study")
    earlier = _method("vlm", p, model="q", context="none", prompt_set="earlier_study")
    topk = _method("vlm", p, model="q", context="clip_topk", prompt_set="study")
    assert answers.hybrid_partners([earlier, plain, topk]) == [plain]
    # a task asked only in the earlier study's wording: its plain questions
    assert answers.hybrid_partners([earlier, topk]) == [earlier]
    assert answers.hybrid_partners([topk]) == []


def test_default_paths_are_the_stages_output_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    assert comparison.default_paths() == {
        "zero_shot": tmp_path / "clip" / "zero_shot_scores.csv",
        "probe": tmp_path / "clip" / "probe_scores.csv",
        "timing": tmp_path / "clip" / "timing.json",
        "answers": tmp_path / "vlm" / "answers.csv",
    }


def test_provenance_line_names_the_data_source_weights_and_commit(monkeypatch):
    monkeypatch.setattr(comparison.provenance, "git_sha", lambda: "abc1234")
    for source, data in [
        ("sample", "embedded sample"),
        ("mirror", "DoITPoMS (mirror)"),
        ("unknown", "DoITPoMS (unknown)"),
    ]:
        line = comparison.provenance_line("random", source)
        assert line == f"data: {data}; weights: random; git abc1234"


def test_gallery_shows_zero_shot_the_logistic_probe_and_plain_vlms_in_the_main_mode():
    rows = pd.DataFrame(
        [
            ("technique", "clip_zero_shot", "", "", "cross-fitted"),
            ("technique", "clip_probe", "", "", "logreg-grouped-cv"),
            ("technique", "clip_probe", "", "", "knn-grouped-cv"),
            ("technique", "vlm", "none", "score", "study"),
            ("technique", "vlm", "none", "score", "study"),  # score: asked of most images
            ("technique", "vlm", "none", "generate", "study"),
            ("technique", "vlm", "none", "score", "earlier_study"),
            ("technique", "vlm", "clip_topk", "score", "study"),
            ("technique", "cascade", "none", "score", "logreg-grouped-cv"),
            ("technique", "fusion", "none", "score", "study"),
            ("category", "clip_zero_shot", "", "", "cross-fitted"),
        ],
        columns=["task", "kind", "context", "mode", "prompt_set"],
    )
    shown = comparison.gallery_predictions(rows)  # technique by default
    assert list(shown.index) == [0, 1, 3, 4]
    assert list(comparison.gallery_predictions(rows, "category").index) == [10]
    assert comparison.gallery_predictions(pd.DataFrame()).empty


def test_published_rows_carry_published_weights():
    table = comparison.published_rows()
    assert (table["weights"] == "pretrained (published)").all()


def test_study_pairs_are_exactly_the_study_questions():
    p = pd.DataFrame([[0.9, 0.1], [0.2, 0.8]], index=[1, 2], columns=["x", "y"])

    def vlm(model, context="none", prompt_set="study"):
        return _method("vlm", p, model=model, context=context, mode="score", prompt_set=prompt_set)

    zs = _method("clip_zero_shot", p, model="ViT-B-32:openai", prompt_set="cross-fitted")
    logreg = _method("clip_probe", p, model="ref", prompt_set="logreg-grouped-cv")
    knn = _method("clip_probe", p, model="ref", prompt_set="knn-grouped-cv")
    # in vlm_methods' order: the earlier study's wording sorts before the study's
    earlier, q, other = vlm("q", prompt_set="earlier_study"), vlm("q"), vlm("l")
    topk, neighbours = vlm("q", "clip_topk"), vlm("q", "clip_neighbours")
    # hybrids are made with the plain question in the study's wording (hybrid_partners)
    cascade = hybrids.hybrid("cascade", zs, q, zs.predictions, None, None)
    fusion = hybrids.hybrid("fusion", zs, q, zs.predictions, None, None)
    found = comparison.study_pairs(
        [zs, logreg, knn, earlier, q, other, topk, neighbours, cascade, fusion]
    )
    expected = [
        ("VLM with CLIP context vs without", topk, q),
        ("VLM with CLIP context vs without", neighbours, q),
        ("one VLM vs another", q, other),  # same question, other model; a minus b in list order
        ("CLIP zero-shot vs CLIP probe", zs, logreg),
        ("CLIP zero-shot vs CLIP probe", zs, knn),
        ("retrieved expert metadata (VLM) vs k-NN probe", neighbours, knn),
        ("cascade vs its VLM alone", cascade, q),  # not the earlier wording of the same model
        ("cascade vs its CLIP stage", cascade, zs),
        ("fusion vs its VLM alone", fusion, q),
        ("fusion vs its CLIP stage", fusion, zs),
    ]
    assert [(question, a.identity(), b.identity()) for question, a, b in found] == [
        (question, a.identity(), b.identity()) for question, a, b in expected
    ]


def _twelve_images():
    """12 images of 6 specimens (pairs of one class): three SEM, two TEM, one AFM."""
    ids = pd.Index(range(1, 13), name="micrograph_no")
    truth = pd.Series(["SEM"] * 6 + ["TEM"] * 4 + ["AFM"] * 2, index=ids)
    groups = pd.Series([f"specimen {(i + 1) // 2}" for i in ids], index=ids)
    return ids, truth, groups


def test_table_row_summarises_the_answered_images_by_specimen():
    ids, truth, groups = _twelve_images()
    right_top, right_second = {"SEM": 0.6, "TEM": 0.3, "AFM": 0.1}, {"TEM": 0.5, "SEM": 0.3}
    wrong = {"TEM": 0.5, "AFM": 0.3, "SEM": 0.2}  # truth SEM third
    rows = [right_top, right_second, wrong, wrong, right_top, right_top]  # SEM images
    rows += [{"TEM": 0.6, "SEM": 0.3}, {"SEM": 0.5, "TEM": 0.4}]  # right; TEM second
    rows += [{"SEM": 0.5, "AFM": 0.3, "TEM": 0.2}, {"TEM": 0.6, "SEM": 0.3}]  # TEM third; right
    rows += [{"AFM": 0.7, "SEM": 0.2}, {"SEM": 0.5, "TEM": 0.3, "AFM": 0.2}]  # right; AFM third
    probs = pd.DataFrame(rows, index=ids).reindex(columns=CLASSES).fillna(0.0)
    clip = _method("clip_zero_shot", probs, model="ViT-B-32:openai", prompt_set="cross-fitted")
    vlm = methods.Method(
        "vlm", "technique", "q", clip.predictions, context="none", mode="generate",
        visual_tokens=256.0,
    )  # fmt: skip
    cascade = hybrids.hybrid("cascade", clip, vlm, clip.predictions, None, None)
    cascade.notes["fraction_to_vlm"] = 0.25
    fusion = hybrids.hybrid("fusion", clip, vlm, clip.predictions, probs, None)
    labelled = pd.concat([truth, pd.Series(["SEM"], index=[13])])  # 13: nobody answered it
    records = pd.DataFrame({"specimen_group": pd.concat([groups, pd.Series(["x"], index=[13])])})
    row = comparison._row(clip, labelled, records, "all labelled", 10, 3)
    assert (row["task"], row["subset"], row["label"]) == (
        "technique",
        "all labelled",
        "CLIP ViT-B-32:openai zero-shot",
    )
    assert (row["n"], row["n_specimens"]) == (12, 6)
    assert row["accuracy"] == pytest.approx(6 / 12)  # images 1, 5, 6, 7, 10, 11
    assert row["top2_accuracy"] == pytest.approx(8 / 12)  # and 2, 8
    assert row["fraction_to_vlm"] is None
    # the intervals resample specimens with the n_boot and seed asked for
    expected = stats.summarise(
        truth.to_numpy(), list(clip.predictions), groups.to_numpy(), n_boot=10, seed=3
    )
    assert {k: row[k] for k in expected} == expected
    assert expected != stats.summarise(
        truth.to_numpy(), list(clip.predictions), groups.to_numpy(), n_boot=10, seed=5
    )  # the seed shows here
    answers_only = comparison._row(vlm, labelled, records, "all labelled", 10, 3)
    assert "top2_accuracy" not in answers_only  # no probabilities: no top-2
    assert answers_only["visual_tokens_per_image"] == 256.0
    assert comparison._row(cascade, labelled, records, "s", 10, 3)["fraction_to_vlm"] == 0.25
    assert comparison._row(fusion, labelled, records, "s", 10, 3)["fraction_to_vlm"] == 1.0


def test_paired_rows_test_each_pair_on_the_images_both_answered():
    ids, truth, groups = _twelve_images()
    right = truth.where(truth.index != 3, "TEM")  # all but image 3
    wrong_on_tem = truth.where(truth != "TEM", "SEM")  # all but the 4 TEM images
    a = methods.Method("vlm", "technique", "a", right, context="none", mode="score")
    b = methods.Method("vlm", "technique", "b", wrong_on_tem, context="none", mode="score")
    (row,) = family._paired_rows([("one VLM vs another", a, b, truth)], groups, 40, 500, 3)
    assert (row["task"], row["question"]) == ("technique", "one VLM vs another")
    assert (row["method_a"], row["method_b"], row["a_model"], row["b_model"]) == ("a", "b") * 2
    assert (row["n"], row["n_specimens"]) == (12, 6)
    assert row["accuracy_difference"] == pytest.approx(11 / 12 - 8 / 12)
    expected = stats.paired_comparison(
        truth.to_numpy(),
        list(right),
        list(wrong_on_tem),
        groups.to_numpy(),
        n_boot=40,
        n_permutations=500,
        seed=3,
    )
    assert {k: row[k] for k in expected} == expected
    assert expected != stats.paired_comparison(
        truth.to_numpy(), list(right), list(wrong_on_tem), groups.to_numpy(), n_boot=40, seed=5
    )  # the seed shows here
    # two images (of one specimen) are enough; a pair sharing one image is skipped, and the
    # pairs after it still tested
    topk = methods.Method(
        "vlm", "technique", "a", right.loc[[1]], context="clip_topk", mode="score"
    )
    few = [("one VLM vs another", a.restricted([1, 2]), b.restricted([1, 2]), truth)]
    few.insert(0, ("VLM with CLIP context vs without", topk, a, truth))
    (row,) = family._paired_rows(few, groups, 40, 500, 3)
    assert (row["question"], row["n"], row["n_specimens"]) == ("one VLM vs another", 2, 1)


def test_hybrids_choose_on_the_other_fold_and_cost_what_they_send():
    ids = pd.Index(range(1, 9))
    folds = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=ids)
    truth = pd.Series(list("xyyx") * 2, index=ids)
    # CLIP is confident (margin 0.6) and right except on images 3 and 7 (margin 0.1, wrong);
    # the VLM is always right, so each fold's best and cheapest threshold is 0.6: it sends
    # just the unconfident image, 2 of 8 in all
    good = pd.DataFrame([[0.8, 0.2], [0.2, 0.8], [0.55, 0.45], [0.8, 0.2]] * 2, index=ids)
    good.columns = ["x", "y"]
    candidates = {
        "good": _method("clip_zero_shot", good, model="ViT-B-32:openai", prompt_set="good"),
        "poor": _method("clip_zero_shot", 1 - good, model="ViT-B-32:openai", prompt_set="poor"),
    }
    clip = replace_prompt_set(candidates["good"], "cross-fitted")  # seconds unknown: None
    generated = methods.Method(
        "vlm", "technique", "q", truth.astype(object), context="none", mode="generate",
        visual_tokens=256.0,
    )  # fmt: skip
    choices, curves = [], []
    (cascade,) = comparison._hybrids(candidates, clip, generated, truth, folds, choices, curves)
    assert list(cascade.predictions) == list(truth)
    assert cascade.notes["fraction_to_vlm"] == 0.25
    assert cascade.seconds_per_image == 0.0  # no time known for either part
    assert cascade.visual_tokens == 0.25 * 256
    assert [(c["task"], c["kind"], c["held_out_fold"], c["prompt_set"]) for c in choices] == [
        ("technique", "cascade", 0, "good"),
        ("technique", "cascade", 1, "good"),
    ]
    assert [c["threshold"] for c in choices] == pytest.approx([0.6, 0.6])
    (curve,) = curves
    assert list(curve["fraction_to_vlm"]) == [0.0, 0.25, 1.0]
    assert set(zip(curve["task"], curve["base"], curve["vlm"], curve["mode"], strict=True)) == {
        ("technique", "CLIP ViT-B-32:openai zero-shot", "q (generated)", "generate")
    }

    # with probabilities the VLM is also fused (every image asked: its full cost); one
    # prompt set leaves nothing to choose, so the row keeps the method's own identity
    # (right where CLIP is unconfident, mildly wrong on images 1 and 5 where CLIP is sure: the
    # fusion is right everywhere, so it is neither of its parts)
    vlm_probs = pd.DataFrame({"x": (truth == "x") * 0.9 + 0.05, "y": (truth == "y") * 0.9 + 0.05})
    vlm_probs.loc[[1, 5]] = [0.4, 0.6]
    scored = _method("vlm", vlm_probs, model="q", context="none", mode="score")
    scored.seconds_per_image = 2.0
    choices = []
    made = comparison._hybrids({"good": clip}, clip, scored, truth, folds, choices, [])
    assert [m.kind for m in made] == ["cascade", "fusion"]
    assert made[0].seconds_per_image == pytest.approx(0.25 * 2.0)
    assert made[1].seconds_per_image == 2.0
    assert made[0].visual_tokens is None and made[1].visual_tokens is None
    assert all(c["prompt_set"] == "cross-fitted" for c in choices)
    weights = [c["weight"] for c in choices if c["kind"] == "fusion"]
    assert len(weights) == 2 and set(weights) <= set(hybrids.FUSION_WEIGHTS)


def replace_prompt_set(method, prompt_set):
    from dataclasses import replace

    return replace(method, prompt_set=prompt_set)


CATEGORIES = taxonomy.TASKS["category"][1]


def _small_study(build, *, probes=True, modes=("score", "generate")):
    """24 images of 12 specimens with technique and category labels, the first two specimens
    archaeological slags; CLIP outputs and VLM answers written where the stages write them."""
    ids = np.arange(1, 25)
    specimen = (ids + 1) // 2
    df = pd.DataFrame(
        {
            "micrograph_no": ids,
            "technique_family": [CLASSES[s % 4] for s in specimen],
            "technique_coarse": None,
            "primary_category": [CATEGORIES[(s // 4) % 4] for s in specimen],
            "specimen_group": [f"specimen {s}" for s in specimen],
            "brief_description": ["slag" if s <= 2 else f"specimen {s}" for s in specimen],
        }
    )

    def scores(model, task, prompt_set, shift=0):
        classes = taxonomy.TASKS[task][1]
        rows = []
        for i, truth in zip(ids, df[taxonomy.TASKS[task][0]], strict=True):
            wrong = shift or (i % 5 == 0)  # right but on every fifth image, or never
            guess = classes[(classes.index(truth) + (shift or 1) * wrong) % len(classes)]
            top = 0.7 if i % 3 else 0.3  # every third image unconfident
            for c in classes:
                p = top if c == guess else (1 - top) / (len(classes) - 1)
                rows.append((i, model, "random", task, prompt_set, c, p))
        return rows

    clip, vlm = build / "clip", build / "vlm"
    clip.mkdir(parents=True)
    vlm.mkdir()
    zero_shot = scores("ViT-B-32:openai", "technique", "good")
    zero_shot += scores("ViT-B-32:openai", "technique", "poor", shift=1)  # always wrong
    zero_shot += scores("ViT-B-32:openai", "category", "ensemble")
    columns = ["micrograph_no", "model", "weights", "task", "prompt_set", "class", "probability"]
    pd.DataFrame(zero_shot, columns=columns).to_csv(clip / "zero_shot_scores.csv", index=False)
    if probes:
        probe = scores("probe:reference ViT-B/32", "technique", "logreg-grouped-cv")
        probe += scores("probe:reference ViT-B/32", "technique", "knn-grouped-cv")
        pd.DataFrame(probe, columns=columns).to_csv(clip / "probe_scores.csv", index=False)
    answers = []
    for task, mode in [("technique", m) for m in modes] + [("category", "score")] * probes:
        classes = taxonomy.TASKS[task][1]
        for i, truth in zip(ids, df[taxonomy.TASKS[task][0]], strict=True):
            probs = {c: 0.9 if c == truth else 0.1 / (len(classes) - 1) for c in classes}
            answers.append(
                _answer(i, mode=mode, task=task, truth=truth, latency_s=2.0, visual_tokens=256)
                | ({"probabilities": json.dumps(probs)} if mode == "score" else {})
                | {"prediction": truth}
            )
    if answers:
        pd.DataFrame(answers).to_csv(vlm / "answers.csv", index=False)
    return df


def test_compare_pools_every_method_per_task_and_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    asked = []
    monkeypatch.setattr(comparison.provenance, "git_sha", lambda: asked.append(1) or "abc1234")
    df = _small_study(tmp_path)
    result = comparison.compare(df, n_boot=5)  # the stages' own files (no timing.json)
    assert len(asked) == 1  # the commit asked once per table, not once per row (git status)
    table = result.table
    rows = table.groupby(["task", "subset", "kind"]).size().to_dict()
    # technique: 3 CLIP stages (zero-shot, 2 probes) x 2 VLMs (score, generated) cascades and
    # x 1 VLM with probabilities fusions; category: 1 stage x 1 VLM, with and without slags.
    # The VLM here is always right, so every fusion answers as it: no fusion row of its own
    assert rows == {
        ("technique", "all labelled", "clip_zero_shot"): 1,
        ("technique", "all labelled", "clip_probe"): 2,
        ("technique", "all labelled", "vlm"): 2,
        ("technique", "all labelled", "cascade"): 6,
        **{
            ("category", subset, kind): 1
            for subset in ("all labelled", "without archaeological slags")
            for kind in ("clip_zero_shot", "vlm", "cascade", "chance", "majority")
        },
        ("technique", "all labelled", "chance"): 1,
        ("technique", "all labelled", "majority"): 1,
    }
    fusions = result.choices[result.choices["kind"] == "fusion"]
    assert len(fusions) == 2 * (3 + 1)  # one choice row per fold, each says what it is
    assert set(fusions["reported_as"]) == {"its VLM (the fusion answers as it on every image)"}
    assert not (result.paired["a_kind"] == "fusion").any()  # never tested as a hybrid
    n = table.groupby(["task", "subset"])["n"].unique().to_dict()
    assert {k: list(v) for k, v in n.items()} == {
        ("category", "all labelled"): [24],
        ("category", "without archaeological slags"): [20],  # 2 slag specimens, 4 images
        ("technique", "all labelled"): [24],
    }
    by_kind = table[table["subset"] == "all labelled"].groupby("kind")["prompt_set"]
    assert set(by_kind.get_group("clip_zero_shot")) == {"cross-fitted"}
    assert set(by_kind.get_group("clip_probe")) == {"logreg-grouped-cv", "knn-grouped-cv"}
    assert table["seconds_per_image"][table["kind"] == "clip_probe"].isna().all()  # no timing
    assert list(table["provenance"]) == [
        comparison.provenance_line(w, "unknown") for w in table["weights"]
    ]
    # the zero-shot set is chosen on the other fold: "good" on both
    zero_shot = result.choices[result.choices["kind"] == "clip_zero_shot"]
    assert sorted(zip(zero_shot["task"], zero_shot["prompt_set"], strict=True)) == [
        ("category", "ensemble"),
        ("category", "ensemble"),
        ("technique", "good"),
        ("technique", "good"),
    ]
    # every frame of per-image or per-method rows: both tasks, one row per index label
    everything = table[table["subset"] == "all labelled"]
    everything = everything[~everything["kind"].isin(["chance", "majority"])]  # no answers
    cascades = set(
        everything.loc[everything["kind"] == "cascade", ["task", "label"]].itertuples(
            index=False, name=None
        )
    )
    assert set(zip(result.handoffs["task"], result.handoffs["method"], strict=True)) == cascades
    assert len(result.handoffs) == 24 * len(cascades) == 24 * 7
    assert (
        set(result.predictions["task"]) == set(result.paired["task"]) == {"technique", "category"}
    )
    assert len(result.predictions) == 24 * len(everything)
    assert set(result.curves["task"]) == {"technique", "category"}
    assert len(result.curves.groupby(["task", "base", "vlm", "mode"])) == 3 * 2 + 1
    for frame in (result.predictions, result.handoffs, result.curves):
        assert frame.index.equals(pd.RangeIndex(len(frame)))


def test_compare_uses_its_seed_for_folds_and_intervals(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    df = _small_study(tmp_path, probes=False, modes=("generate",))
    assert (splits.assign_folds(df, seed=0) != splits.assign_folds(df, seed=1)).any()
    results = {seed: comparison.compare(df, n_boot=5, seed=seed) for seed in (0, 1)}
    for seed, result in results.items():
        folds = splits.assign_folds(df, seed=seed)
        sizes = result.choices.groupby("held_out_fold")["n_chosen_on"].first()
        assert sizes.to_dict() == {0: int((folds == 1).sum()), 1: int((folds == 0).sum())}
    # the same seed gives the same numbers, intervals included
    again = comparison.compare(df, n_boot=5, seed=1)
    pd.testing.assert_frame_equal(results[1].table, again.table)
    pd.testing.assert_frame_equal(results[1].paired, again.paired)


def test_compare_with_fewer_stages_leaves_their_frames_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    df = _small_study(tmp_path, probes=False, modes=("generate",))
    generated_only = comparison.compare(df, n_boot=5)
    # a VLM without probabilities: a cascade, which hands off, and no fusion
    assert set(generated_only.table["kind"]) == {
        "clip_zero_shot", "vlm", "cascade", "chance", "majority"
    }  # fmt: skip
    assert len(generated_only.handoffs) == 24
    (tmp_path / "vlm" / "answers.csv").unlink()
    clip_only = comparison.compare(df, n_boot=5)
    assert set(clip_only.table["task"]) == {"technique", "category"}
    assert clip_only.curves.empty and clip_only.handoffs.empty and clip_only.paired.empty
    (tmp_path / "clip" / "zero_shot_scores.csv").unlink()
    nothing = comparison.compare(df, n_boot=5)
    assert nothing.table.empty and nothing.predictions.empty and nothing.choices.empty


def test_n_note_says_which_images_a_row_counts():
    ids, truth, _ = _twelve_images()
    probe = methods.Method("clip_probe", "technique", "ref", truth.iloc[:10])
    generated = methods.Method("vlm", "technique", "q", truth.iloc[:4], mode="generate")
    full = methods.Method("clip_zero_shot", "technique", "z", truth)
    assert comparison.n_note(full, 12, 12) == "every labelled image"
    assert comparison.n_note(probe, 10, 12) == (
        "10 of 12 labelled images: the images with reference CLIP features"
    )
    assert comparison.n_note(generated, 4, 12) == "generate-mode agreement subset, n = 4 of 12"


def test_the_cascade_threshold_is_class_balanced_where_accuracy_would_send_nothing():
    # CLIP says "x" for all 10 images; the 2 "y" images and 4 "x" images are unconfident. The
    # VLM says "y" always. Sending the 6: balanced accuracy 0.75, accuracy 0.6; sending none:
    # balanced accuracy 0.5, accuracy 0.8
    ids = pd.Index(range(1, 11))
    truth = pd.Series(["x"] * 8 + ["y"] * 2, index=ids)
    margin_top = [0.52] * 4 + [0.9] * 4 + [0.55] * 2  # margins 0.04, 0.8, 0.1
    clip_probs = pd.DataFrame({"x": margin_top, "y": [1 - p for p in margin_top]}, index=ids)
    clip = _method("clip_zero_shot", clip_probs)
    vlm = _method("vlm", pd.DataFrame({"x": [0.1] * 10, "y": [0.9] * 10}, index=ids))
    curve = hybrids.cascade_curve(clip, vlm, truth)
    by_accuracy = curve.sort_values("accuracy", ascending=False).iloc[0]
    assert by_accuracy["fraction_to_vlm"] == 0.0  # accuracy alone would send nothing
    threshold = hybrids.choose_threshold(curve)
    published = hybrids.apply_cascade(clip, vlm, threshold)
    assert published.notes["fraction_to_vlm"] == pytest.approx(0.6)
    assert list(published.predictions) == ["y"] * 4 + ["x"] * 4 + ["y"] * 2
    assert metrics.balanced_accuracy(truth, list(published.predictions)) == pytest.approx(0.75)


def test_the_fusion_weight_is_class_balanced_where_accuracy_would_choose_the_clip_stage():
    # CLIP says "x" everywhere, a little more sure on the x images; the VLM is right on the
    # "y" images and wrong on 3 of the 8 "x" images. Weight 1 (CLIP): accuracy 0.8, balanced
    # 0.5; weight 0 (VLM): accuracy 0.7, balanced 0.8125
    ids = pd.Index(range(1, 11))
    truth = pd.Series(["x"] * 8 + ["y"] * 2, index=ids)
    clip = _method("clip_zero_shot", pd.DataFrame({"x": [0.6] * 10, "y": [0.4] * 10}, index=ids))
    vlm_x = [0.1] * 3 + [0.9] * 5 + [0.1] * 2
    vlm = _method("vlm", pd.DataFrame({"x": vlm_x, "y": [1 - p for p in vlm_x]}, index=ids))
    scored = {
        w: (
            metrics.balanced_accuracy(truth, list(hybrids.fuse(clip, vlm, w).predictions)),
            metrics.accuracy(truth, list(hybrids.fuse(clip, vlm, w).predictions)),
        )
        for w in hybrids.FUSION_WEIGHTS
    }
    by_accuracy = max(scored, key=lambda w: (scored[w][1], -abs(w - 0.5)))
    weight = hybrids.choose_fusion_weight(clip, vlm, truth)
    assert scored[by_accuracy][0] < scored[weight][0]  # the two objectives choose differently
    published = hybrids.fuse(clip, vlm, weight).predictions
    assert metrics.balanced_accuracy(truth, list(published)) == pytest.approx(0.8125)


def test_a_hybrid_that_is_one_of_its_parts_is_reported_as_that_part():
    # CLIP right and sure everywhere, the VLM always wrong: each fold's cascade threshold is
    # -inf (sends nothing) and each fold's fusion weight puts everything on CLIP
    ids = pd.Index(range(1, 9))
    folds = pd.Series([0, 1] * 4, index=ids)
    truth = pd.Series(list("xyyx") * 2, index=ids)
    sure = pd.DataFrame({"x": (truth == "x") * 0.8 + 0.1, "y": (truth == "y") * 0.8 + 0.1})
    clip = _method("clip_probe", sure, weights="pretrained", prompt_set="logreg-grouped-cv")
    vlm = _method("vlm", 1 - sure, model="q", weights="random", context="none", mode="score")
    choices = []
    made = comparison._hybrids({"p": clip}, clip, vlm, truth, folds, choices, [])
    assert made == []  # neither is a method of its own, so neither is tested against the VLM
    said = {(c["kind"], c["held_out_fold"]): c["reported_as"] for c in choices}
    assert (
        said[("cascade", 0)]
        == said[("cascade", 1)]
        == ("its CLIP stage (sends no image to the VLM)")
    )
    assert [c["threshold"] for c in choices if c["kind"] == "cascade"] == [-np.inf, -np.inf]
    assert said[("fusion", 0)].startswith("its CLIP stage")
    # a distinct hybrid names each part's weights and the share it sends
    half = hybrids.hybrid("cascade", clip, vlm, clip.predictions, None, pd.Series([True, False]))
    assert methods.part_weights(half) == "probe: pretrained · VLM: random"
    assert methods.part_weights(clip) == ""
