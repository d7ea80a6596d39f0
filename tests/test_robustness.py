"""Robustness tables on planted predictions whose answers are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from microqa.compare import robustness
from microqa.data import taxonomy

Y = ["A", "A", "B", "B", "A", "B"]
SPECIMENS = ["s1", "s1", "s2", "s2", "s3", "s3"]
ANSWERS = {
    # correct 5/6: recall A 3/3, recall B 2/3 -> balanced accuracy 5/6
    "original": ["A", "A", "B", "B", "A", "A"],
    # all correct: balanced accuracy 1; image 6 changed -> consistency 5/6
    "hflip": ["A", "A", "B", "B", "A", "B"],
    # recall A 2/3 (image 1 wrong), recall B 1/3 (image 4 unanswered, 6 wrong) -> 1/2;
    # images 1 and 4 changed -> consistency 4/6
    "gray": ["B", "A", "B", None, "A", "A"],
    # always A: balanced accuracy 1/2
    "blank": ["A"] * 6,
}


def _table(variants=ANSWERS, method="clip") -> pd.DataFrame:
    rows = [
        {
            "method": method,
            "task": "technique",
            "variant": name,
            "micrograph_no": i + 1,
            "y_true": Y[i],
            "y_pred": answers[i],
            "specimen": SPECIMENS[i],
        }
        for name, answers in variants.items()
        for i in range(6)
    ]
    return pd.DataFrame(rows)


def test_change_in_balanced_accuracy_and_consistency_hand_worked():
    table = robustness.robustness_table(_table(), cluster="specimen", n_boot=200)
    rows = table.set_index("variant")
    assert list(rows.index) == ["hflip", "gray"]  # blank is a baseline, not a transform
    assert rows.loc["hflip", "balanced_accuracy_difference"] == pytest.approx(1 - 5 / 6)
    assert rows.loc["gray", "balanced_accuracy_difference"] == pytest.approx(1 / 2 - 5 / 6)
    assert rows.loc["hflip", "consistency"] == pytest.approx(5 / 6)
    assert rows.loc["gray", "consistency"] == pytest.approx(4 / 6)
    assert rows.loc["gray", "group"] == "colour" and rows.loc["hflip", "group"] == "geometric"
    assert (rows["n"] == 6).all() and (rows["n_specimens"] == 3).all()
    for name in ("balanced_accuracy", "consistency"):
        point = rows[f"{name}_difference" if name != "consistency" else name]
        assert (rows[f"{name}_ci_low"] <= point + 1e-12).all()
        assert (point <= rows[f"{name}_ci_high"] + 1e-12).all()


def test_visual_gain_is_original_minus_blank():
    gain = robustness.visual_gain(_table(), cluster="specimen", n_boot=200)
    assert len(gain) == 1
    assert gain.loc[0, "balanced_accuracy_difference"] == pytest.approx(5 / 6 - 1 / 2)
    assert gain.loc[0, "accuracy_difference"] == pytest.approx(5 / 6 - 3 / 6)


def test_an_unchanged_variant_has_a_zero_interval():
    same = {"original": ANSWERS["original"], "rot90": ANSWERS["original"]}
    row = robustness.robustness_table(_table(same), cluster="specimen", n_boot=100).iloc[0]
    assert row["balanced_accuracy_difference"] == 0
    assert (row["balanced_accuracy_ci_low"], row["balanced_accuracy_ci_high"]) == (0, 0)
    assert (row["consistency"], row["consistency_ci_low"], row["consistency_ci_high"]) == (1, 1, 1)


def test_only_images_answered_on_both_are_paired():
    table = _table({"original": ANSWERS["original"], "hflip": ANSWERS["hflip"]})
    table = table[~((table["variant"] == "hflip") & (table["micrograph_no"] == 6))]
    row = robustness.robustness_table(table, cluster="specimen", n_boot=50).iloc[0]
    assert row["n"] == 5 and row["consistency"] == 1.0


def test_the_interval_resamples_specimens_not_images():
    # 20 specimens of 5 images; the answers change on every image of 4 specimens (20 images)
    y = np.array(["A", "B"] * 50)
    changed = np.zeros(100, bool)
    changed[:20] = True
    specimens = np.repeat(np.arange(20), 5)
    other = np.where(changed, np.where(y == "A", "B", "A"), y)
    clustered = robustness.consistency(y, y, other, specimens, n_boot=400)
    per_image = robustness.consistency(y, y, other, np.arange(100), n_boot=400)
    assert clustered["consistency"] == per_image["consistency"] == pytest.approx(0.8)
    width = clustered["consistency_ci_high"] - clustered["consistency_ci_low"]
    assert width > 1.5 * (per_image["consistency_ci_high"] - per_image["consistency_ci_low"])


def test_cluster_is_required_and_bad_tables_are_one_line_errors():
    with pytest.raises(TypeError):
        robustness.robustness_table(_table())  # no cluster: refused
    twice = pd.concat([_table(), _table({"hflip": ANSWERS["hflip"]})])
    with pytest.raises(ValueError, match="answers an image twice"):
        robustness.robustness_table(twice, cluster="specimen", n_boot=10)
    lonely = _table({"original": ANSWERS["original"]})
    lonely_hflip = lonely.assign(variant="hflip", micrograph_no=lonely["micrograph_no"] + 100)
    with pytest.raises(ValueError, match="no image has answers on both"):
        robustness.robustness_table(pd.concat([lonely, lonely_hflip]), cluster="specimen")


# --- the study's own runs: planted build/clip and build/vlm files -----------------------------

A, B = taxonomy.TECHNIQUE_FAMILIES[:2]
CLASS = {"A": A, "B": B}
RECORDS = pd.DataFrame(
    {
        "micrograph_no": range(1, 8),
        "technique_family": [CLASS[y] for y in Y] + [A],
        "technique_coarse": [None] * 7,
        "primary_category": [None] * 7,
        "specimen_group": [*SPECIMENS, "s4"],
        "fold": [0, 0, 1, 1, 0, 0, 1],
    }
)


def _clip_rows(variant, answers):
    return [
        {
            "micrograph_no": i + 1,
            "model": "ViT-B-32:openai",
            "weights": "random",
            "task": "technique",
            "variant": variant,
            "prompt_set": "cross-fitted",
            "chosen_prompt_set": "ensemble",
            "class": cls,
            "probability": 0.7 if CLASS[answer] == cls else 0.3 / 4,
        }
        for i, answer in enumerate(answers)
        for cls in taxonomy.TECHNIQUE_FAMILIES
    ]


def _vlm_rows(variant, answers, *, context="none", first=1):
    rows = []
    for i, answer in enumerate(answers):
        probs = json.dumps({A: 0.9, B: 0.1} if answer == "A" else {A: 0.1, B: 0.9})
        rows.append(
            {
                "micrograph_no": first + i,
                "model": "Qwen/Qwen3-VL-8B-Instruct",
                "backend": "hf",
                "weights": "random",
                "task": "technique",
                "context": context,
                "mode": "score",
                "prompt_set": "study",
                "rotation": 0,
                "permutation": f"{A}|{B}",
                "truth": CLASS[Y[(first + i - 1) % 6]],
                "prediction": CLASS[answer] if answer else "",
                "probabilities": probs if answer else "",  # no letter scored: no answer
                "letter_mass": 1.0,
                "latency_s": 0.1,
                "visual_tokens": 64,
                "raw_text": "",
                "cached": False,
                "variant": variant,
            }
        )
    return rows


@pytest.fixture
def planted(tmp_path):
    clip = _clip_rows("original", ANSWERS["original"]) + _clip_rows("hflip", ANSWERS["hflip"])
    clip_path = tmp_path / "robustness_scores.csv"
    pd.DataFrame(clip).to_csv(clip_path, index=False)
    vlm = (
        _vlm_rows("original", [*ANSWERS["original"], "A"])  # image 7: outside the controls
        + _vlm_rows("gray", ANSWERS["gray"])
        + _vlm_rows("blank", ANSWERS["blank"])
        + _vlm_rows("original", list("BBBBBB"), context="clip_topk")  # not as the study asks
        + _vlm_rows("hflip", ["B"], first=8)  # an image the original never answered
    )
    answers_path = tmp_path / "answers.csv"
    pd.DataFrame(vlm).to_csv(answers_path, index=False)
    return {"robustness": clip_path, "answers": answers_path}


def test_study_tables_of_planted_runs_hand_worked(planted):
    study = robustness.study_tables(RECORDS, n_boot=200, paths=planted)
    rows = study.robustness.set_index(["kind", "variant"])
    clip, vlm = rows.loc[("clip_zero_shot", "hflip")], rows.loc[("vlm", "gray")]
    assert clip["method"] == "CLIP ViT-B-32:openai zero-shot" and clip["weights"] == "random"
    assert clip["balanced_accuracy_difference"] == pytest.approx(1 - 5 / 6)
    assert clip["consistency"] == pytest.approx(5 / 6) and clip["n"] == 6
    # the VLM as the study asks it (no CLIP context), its forced choice; image 4 unanswered
    assert vlm["method"] == "Qwen3-VL-8B-Instruct"
    assert vlm["balanced_accuracy_difference"] == pytest.approx(1 / 2 - 5 / 6)
    assert vlm["consistency"] == pytest.approx(4 / 6) and vlm["n"] == 6  # not image 7
    assert len(rows) == 2  # no hflip row for the VLM: its only image has no original answer
    assert {"p_sign_flip_holm", "family_size"} <= set(study.robustness.columns)
    gain = study.visual_gain.iloc[0]
    assert len(study.visual_gain) == 1 and gain["method"] == "Qwen3-VL-8B-Instruct"
    assert gain["balanced_accuracy_difference"] == pytest.approx(5 / 6 - 1 / 2)
    assert gain["n"] == 6 and gain["n_specimens"] == 3


def test_study_tables_without_the_stages_outputs_are_empty(tmp_path):
    missing = {"robustness": tmp_path / "none.csv", "answers": tmp_path / "none.csv"}
    study = robustness.study_tables(RECORDS, n_boot=10, paths=missing)
    assert study.robustness.empty and study.visual_gain.empty and study.predictions.empty


def test_the_robustness_figure_draws_every_transform(planted):
    import matplotlib

    matplotlib.use("Agg")
    from microqa.compare.robustness_figures import robustness_figure

    table = robustness.study_tables(RECORDS, n_boot=50, paths=planted).robustness
    fig = robustness_figure(table, "t")
    assert fig.axes[0].get_title() == "technique"
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "horizontal flip",
        "grayscale (colour)",
    }
