"""clip.zero_shot and clip.prompts: ensembles, probabilities on planted embeddings, prompt sets,
and the prompt-set choice made on the select half only."""

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
    """Records, a select/evaluate split and scores where one prompt set is perfect only on the
    select half and another only on the evaluate half."""
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


def test_prompt_set_is_chosen_on_the_select_half_only():
    # "good-on-select" is perfect where choices are made and random where they are reported;
    # "good-on-evaluate" the reverse. A choice that peeked would take the second.
    df, split, scores, evaluate = planted_study()
    best = clip.choose_prompt_sets(scores, df, split)
    assert best.loc[0, "prompt_set"] == "good-on-select"
    table = clip.zero_shot_table(scores, df, split, best, n_boot=50)
    row = table[(table.prompt_set == "good-on-evaluate") & (table.subset == "evaluate")].iloc[0]
    assert row["accuracy"] == 1.0 and row["n"] == len(evaluate) and not row["selected"]
    chosen = table[(table.prompt_set == "good-on-select") & (table.subset == "evaluate")].iloc[0]
    assert chosen["selected"] and chosen["accuracy"] < 0.5


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
