"""vlm.context: the CLIP top-k labels come from the prompt set chosen for the image's fold of
specimens on the OTHER fold (cross-fitted), so shuffling a fold's labels moves no context
text of that fold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from microqa import clip
from microqa.vlm.context import ClipContext
from tests.test_clip_zero_shot import planted_study


def _write_clip_stage(directory, scores, best):
    directory.mkdir(parents=True)
    scores.to_csv(directory / "zero_shot_scores.csv", index=False)
    best[clip.outputs.BEST_COLUMNS].to_csv(directory / "best_prompt_sets.csv", index=False)
    return directory


def _context(directory, df, split):
    folds = pd.Series(split.to_numpy(), index=df["micrograph_no"])
    return ClipContext(df, directory=directory, clip_model="planted", folds=folds)


def test_top_labels_come_from_the_set_chosen_on_the_other_fold(tmp_path):
    df, split, scores, evaluate = planted_study()
    best = clip.choose_prompt_sets(scores, df, split)
    context = _context(_write_clip_stage(tmp_path / "clip", scores, best), df, split)
    assert context.available("clip_topk") == (True, "")
    for mno in df["micrograph_no"]:
        used = "good-on-select" if mno in evaluate else "good-on-evaluate"
        own = scores[(scores["micrograph_no"] == mno) & (scores["prompt_set"] == used)]
        top = own.sort_values("probability", ascending=False, kind="stable").iloc[0]
        assert context.top_labels(mno, "technique")[0] == (top["class"], top["probability"])


def test_shuffling_one_folds_labels_moves_no_context_text_of_that_fold(tmp_path):
    df, split, scores, evaluate = planted_study()
    shuffled = df.copy()
    in_fold = (split == "evaluate").to_numpy()
    shuffled.loc[in_fold, "technique_family"] = np.random.default_rng(3).permutation(
        df.loc[in_fold, "technique_family"].to_numpy()
    )
    texts = []
    for name, records in (("before", df), ("after", shuffled)):
        best = clip.choose_prompt_sets(scores, records, split)
        context = _context(_write_clip_stage(tmp_path / name, scores, best), records, split)
        texts.append({m: context.render("clip_topk", m, "technique") for m in sorted(evaluate)})
    assert texts[0] == texts[1]
    # the other fold's texts do move: its choice was made on the shuffled labels
    swapped = df.copy()
    in_other = ~in_fold
    swapped.loc[in_other, "technique_family"] = np.random.default_rng(4).permutation(
        df.loc[in_other, "technique_family"].to_numpy()
    )
    best = clip.choose_prompt_sets(scores, swapped, split)
    assert best.set_index("fold").loc["evaluate", "prompt_set"] == "good-on-evaluate"
    moved = _context(_write_clip_stage(tmp_path / "swapped", scores, best), swapped, split)
    assert any(moved.render("clip_topk", m, "technique") != texts[0][m] for m in evaluate)


def test_a_choice_file_without_folds_is_refused_not_applied_to_every_image(tmp_path):
    df, split, scores, _ = planted_study()
    directory = tmp_path / "clip"
    directory.mkdir()
    scores.to_csv(directory / "zero_shot_scores.csv", index=False)
    old_style = {"model": "planted", "task": "technique", "prompt_set": "good-on-select"}
    pd.DataFrame([old_style]).to_csv(directory / "best_prompt_sets.csv", index=False)
    ok, reason = _context(directory, df, split).available("clip_topk")
    assert not ok and "per-fold" in reason
