"""clip.zero_shot, clip.prompts and clip.prompt_choice: ensembles, probabilities on planted
embeddings, prompt sets, and the prompt-set choice cross-fitted over the folds of specimens."""

from __future__ import annotations

import numpy as np
import pandas as pd

from microqa import clip, metrics, stats
from microqa.clip import prompts
from microqa.clip import report as clip_report
from microqa.data import taxonomy


def _planted(n_per_class: int, classes, dim: int = 64, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    images = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return centres, images, labels


def test_zero_shot_on_planted_embeddings_is_perfect_and_permuted_labels_are_chance():
    classes = taxonomy.TECHNIQUE_FAMILIES
    centres, images, labels = _planted(200, classes)
    probs = clip.zero_shot_probabilities(images, centres, logit_scale=100.0)
    assert np.allclose(probs.sum(axis=1), 1)
    predicted = np.array(classes)[probs.argmax(axis=1)]
    truth = np.array(classes)[labels]
    assert metrics.accuracy(truth, predicted) == 1.0
    shuffled = np.random.default_rng(1).permutation(truth)
    assert abs(metrics.accuracy(shuffled, predicted) - 1 / len(classes)) < 0.06


def test_logit_scale_sharpens_the_probabilities():
    centres, images, _ = _planted(5, taxonomy.TECHNIQUE_FAMILIES, noise=0.5)
    soft = clip.zero_shot_probabilities(images, centres, logit_scale=1.0)
    sharp = clip.zero_shot_probabilities(images, centres, logit_scale=100.0)
    assert np.array_equal(soft.argmax(axis=1), sharp.argmax(axis=1))
    assert sharp.max(axis=1).mean() > soft.max(axis=1).mean() + 0.3


def test_ensemble_is_the_renormalised_mean_of_normalised_prompt_embeddings():
    vectors = {"a": np.array([3.0, 0, 0]), "b": np.array([0, 0.5, 0]), "c": np.array([0, 0, 2.0])}

    def encode(texts):
        return np.stack([vectors[t] for t in texts])

    got = clip.class_embeddings(encode, {"x": ["a", "b"], "y": ["c"]})
    assert np.allclose(got[0], np.array([1, 1, 0]) / np.sqrt(2))
    assert np.allclose(got[1], [0, 0, 1])


def test_prompt_sets_cover_every_class_of_every_task():
    for task, (_, classes) in taxonomy.TASKS.items():
        sets = prompts.prompt_sets(task)
        assert set(sets) == set(prompts.PROMPT_SET_NAMES)
        for prompt_set in sets.values():
            assert list(prompt_set) == list(classes)
            assert all(prompt_set[c] for c in classes)
    assert prompts.prompt_sets("technique_coarse")["earlier-study"]["SEM"] == ["a SEM image"]
    every = set(prompts.every_prompt())
    assert "a SEM image" in every and all(isinstance(t, str) and t for t in every)


def _scores_frame(df, task, prompt_set, good_ids, seed):
    """Long-format scores: the true class wins on `good_ids`, a random class elsewhere."""
    rng = np.random.default_rng(seed)
    column, classes = taxonomy.TASKS[task]
    rows = []
    for m, truth in zip(df["micrograph_no"], df[column], strict=True):
        winner = truth if m in good_ids else classes[rng.integers(len(classes))]
        for c in classes:
            p = 0.9 if c == winner else 0.1 / (len(classes) - 1)
            rows.append((m, "planted", "random", task, prompt_set, c, p))
    return pd.DataFrame(rows, columns=clip.SCORE_COLUMNS)


def planted_study(n: int = 200):
    """Records, their two folds of specimens ("select", "evaluate") and scores where one prompt
    set is perfect only on the select fold and another only on the evaluate fold. Cross-fitted,
    each fold is scored with the set that is perfect on the OTHER fold: chance here; a choice
    that peeked at the fold's own labels would be perfect."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "micrograph_no": np.arange(n),
            "technique_family": rng.choice(taxonomy.TECHNIQUE_FAMILIES, n),
            "specimen_group": [f"s{i // 2}" for i in range(n)],
            "category_set": [("Metal or alloy",)] * n,
        }
    )
    split = pd.Series(np.where(np.arange(n) % 4 < 2, "select", "evaluate"))
    select = set(df.loc[split == "select", "micrograph_no"])
    evaluate = set(df["micrograph_no"]) - select
    scores = pd.concat(
        [
            _scores_frame(df, "technique", "good-on-select", select, 1),
            _scores_frame(df, "technique", "good-on-evaluate", evaluate, 2),
        ]
    )
    return df, split, scores, evaluate


def test_each_fold_gets_the_prompt_set_chosen_on_the_other_fold():
    df, split, scores, evaluate = planted_study()
    best = clip.choose_prompt_sets(scores, df, split).set_index("fold")
    assert best.loc["evaluate", "prompt_set"] == "good-on-select"
    assert best.loc["select", "prompt_set"] == "good-on-evaluate"
    assert best.loc["evaluate", "n_chosen_on"] == len(df) - len(evaluate)
    assert best.loc["evaluate", "chosen_on_balanced_accuracy"] == 1.0


def test_published_predictions_follow_each_folds_choice_and_score_every_image_once():
    # the choice's effect on what is published, not only the table of choices
    df, split, scores, evaluate = planted_study()
    best = clip.choose_prompt_sets(scores, df, split)
    crossed = clip.cross_fitted_predictions(scores, df, split, best)
    assert sorted(crossed["micrograph_no"]) == list(df["micrograph_no"])  # each image once
    assert set(crossed["prompt_set"]) == {clip.CROSS_FITTED}
    fixed = clip.predictions(scores).set_index(["prompt_set", "micrograph_no"])["predicted"]
    for row in crossed.itertuples():
        used = "good-on-select" if row.micrograph_no in evaluate else "good-on-evaluate"
        assert row.chosen_prompt_set == used
        assert row.predicted == fixed.loc[(used, row.micrograph_no)]
    table = clip.zero_shot_table(scores, df, split, best, n_boot=50)
    published = table[table["selected"]].iloc[0]
    assert published["prompt_set"] == clip.CROSS_FITTED and published["n"] == len(df)
    assert published["accuracy"] < 0.5  # each fold scored with the set good on the other one
    assert "fold evaluate: good-on-select" in published["chosen_sets"]
    one_set = table[table["prompt_set"] == "good-on-evaluate"].iloc[0]
    assert not one_set["selected"] and one_set["n"] == len(df)
    truth = df.set_index("micrograph_no")["technique_family"]
    assert one_set["accuracy"] == metrics.accuracy(
        truth.tolist(), [fixed.loc[("good-on-evaluate", m)] for m in truth.index]
    )


def test_shuffling_one_folds_labels_moves_nothing_applied_to_that_fold():
    df, split, scores, evaluate = planted_study()
    before_best = clip.choose_prompt_sets(scores, df, split)
    before = clip.cross_fitted_predictions(scores, df, split, before_best)
    shuffled = df.copy()
    in_fold = (split == "evaluate").to_numpy()
    shuffled.loc[in_fold, "technique_family"] = np.random.default_rng(3).permutation(
        df.loc[in_fold, "technique_family"].to_numpy()
    )
    assert not shuffled["technique_family"].equals(df["technique_family"])
    after_best = clip.choose_prompt_sets(scores, shuffled, split)
    after = clip.cross_fitted_predictions(scores, shuffled, split, after_best)
    pd.testing.assert_frame_equal(
        before_best[before_best["fold"] == "evaluate"],
        after_best[after_best["fold"] == "evaluate"],
    )
    columns = ["micrograph_no", "chosen_prompt_set", "predicted"]
    pd.testing.assert_frame_equal(
        before[before["micrograph_no"].isin(evaluate)][columns].reset_index(drop=True),
        after[after["micrograph_no"].isin(evaluate)][columns].reset_index(drop=True),
    )


def _one_set_scores(df, prompt_set, predicted):
    classes = taxonomy.TASKS["technique"][1]
    rows = [
        (m, "planted", "random", "technique", prompt_set, c, 0.9 if c == p else 0.025)
        for m, p in zip(df["micrograph_no"], predicted, strict=True)
        for c in classes
    ]
    return pd.DataFrame(rows, columns=clip.SCORE_COLUMNS)


def test_the_prompt_set_choice_is_class_balanced_where_accuracy_would_choose_otherwise():
    # 90 SEM and 10 of each other family. "majority" says SEM always: accuracy 0.69, balanced
    # accuracy 0.2. "balanced" is right on 60% of every class: accuracy 0.6, balanced 0.6.
    families = list(taxonomy.TECHNIQUE_FAMILIES)
    truth = [families[0]] * 90 + [f for f in families[1:] for _ in range(10)]
    n = len(truth)
    df = pd.DataFrame(
        {
            "micrograph_no": np.arange(n),
            "technique_family": truth,
            "specimen_group": [f"s{i}" for i in range(n)],
        }
    )
    wrong = {f: families[(families.index(f) + 1) % len(families)] for f in families}
    right_share = [i % 10 < 6 for i in range(n)]
    balanced = [t if ok else wrong[t] for t, ok in zip(truth, right_share, strict=True)]
    majority = [families[0]] * n
    assert metrics.accuracy(truth, majority) > metrics.accuracy(truth, balanced)  # it discriminates
    scores = pd.concat(
        [_one_set_scores(df, "balanced", balanced), _one_set_scores(df, "majority", majority)]
    )
    folds = pd.Series(np.arange(n) % 2)
    best = clip.choose_prompt_sets(scores, df, folds)
    assert set(best["prompt_set"]) == {"balanced"}
    assert clip.pick_prompt_set({"majority": majority, "balanced": balanced}, truth) == "balanced"


def test_zero_shot_intervals_resample_specimens_not_images(monkeypatch):
    df, split, scores, _ = planted_study()
    best = clip.choose_prompt_sets(scores, df, split)
    seen, summarise = [], stats.summarise

    def spy(y_true, y_pred, groups, **kwargs):
        seen.append(list(groups))
        return summarise(y_true, y_pred, groups, **kwargs)

    monkeypatch.setattr(clip_report.stats, "summarise", spy)
    table = clip.zero_shot_table(scores, df, split, best, n_boot=5)
    assert len(seen) == len(table) > 0
    specimens = set(df["specimen_group"])
    assert all(set(groups) <= specimens for groups in seen)  # specimen ids, not image numbers
    assert (table["n_specimens"] * 2 == table["n"]).all()  # two images per specimen
