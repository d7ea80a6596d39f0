"""The primary family: which named comparisons it holds, by method identity."""

from __future__ import annotations

import pandas as pd
import pytest

from microqa.compare import family
from microqa.compare.methods import Method, label
from microqa.data import variants

IDS = pd.Index(range(1, 7))
TRUTH = pd.Series(list("xxxyyy"), index=IDS)


def _m(kind, predictions, **identity):
    return Method(
        kind, "technique", identity.pop("model", kind), pd.Series(predictions, IDS), **identity
    )


def _study():
    vlm = dict(context="none", mode="score", prompt_set="study")
    probe = _m("clip_probe", list("xxxyyy"), model="ref", prompt_set="logreg-grouped-cv")
    knn = _m("clip_probe", list("xxxyyy"), model="ref", prompt_set="knn-grouped-cv")
    zero = _m("clip_zero_shot", list("xyxyxy"), model="ViT", prompt_set="cross-fitted")
    qwen = _m("vlm", list("xxyyyx"), model="qwen", **vlm)
    llava = _m("vlm", list("yyyyyy"), model="llava", **vlm)
    qwen_topk = _m("vlm", list("xxxyyx"), model="qwen", **{**vlm, "context": "clip_topk"})
    qwen_neighbours = _m(
        "vlm", list("xxxyyy"), model="qwen", **{**vlm, "context": "clip_neighbours"}
    )
    qwen_generated = _m("vlm", list("xxxyyy"), model="qwen", **{**vlm, "mode": "generate"})
    qwen_earlier = _m("vlm", list("xxxyyy"), model="qwen", **{**vlm, "prompt_set": "earlier_study"})
    hybrid = dict(model="ref", prompt_set="logreg-grouped-cv", partner="qwen", context="none")
    fusion = _m("fusion", list("xxxyyy"), base="clip_probe", mode="score", **hybrid)
    cascade = _m("cascade", list("xxxyyy"), base="clip_probe", mode="score", **hybrid)
    knn_fusion = _m(
        "fusion",
        list("xxxyyy"),
        base="clip_probe",
        mode="score",
        **{**hybrid, "prompt_set": "knn-grouped-cv"},
    )
    return [
        probe,
        knn,
        zero,
        qwen,
        llava,
        qwen_topk,
        qwen_neighbours,
        qwen_generated,
        qwen_earlier,
        fusion,
        cascade,
        knn_fusion,
    ]


def _better(x, y):
    return x if (x.predictions == TRUTH).mean() >= (y.predictions == TRUTH).mean() else y


def _named(pairs):
    return [(q, label(a.identity()), label(b.identity())) for q, a, b in pairs]


def test_the_primary_family_holds_the_named_questions_and_nothing_else():
    probe, _, zero, qwen, llava, qwen_topk, *_, fusion, _, _ = _study()
    pairs = family.primary_pairs(_study(), _better)
    assert [(q, a.identity(), b.identity()) for q, a, b in pairs] == [
        ("VLM vs CLIP probe", qwen.identity(), probe.identity()),
        ("VLM vs CLIP probe", llava.identity(), probe.identity()),
        ("VLM with vs without CLIP context", qwen_topk.identity(), qwen.identity()),
        # the fusion, not the cascade, of the logistic probe with qwen; its better part: the
        # probe (6/6 right against qwen's 4/6)
        ("hybrid vs its better part", fusion.identity(), probe.identity()),
        ("CLIP zero-shot vs CLIP probe", zero.identity(), probe.identity()),
    ]
    assert {q for q, _, _ in pairs} <= set(family.PRIMARY_QUESTIONS)


def test_the_better_part_is_the_one_with_higher_balanced_accuracy_on_both():
    labelled = pd.Series(list("xxxxxy"), index=IDS)  # imbalanced: accuracy and balance disagree
    always_x = _m("vlm", list("xxxxxx"))  # accuracy 5/6, balanced 0.5
    balanced = _m("clip_probe", list("xxxyyy"))  # accuracy 4/6, balanced (3/5 + 1) / 2 = 0.8
    better = family.better_part(labelled)
    assert better(always_x, balanced) is balanced and better(balanced, always_x) is balanced


def test_the_blank_image_pair_appears_when_the_no_image_baseline_exists():
    study = _study()
    assert not any(
        q == family.PRIMARY_QUESTIONS[4] for q, _, _ in family.primary_pairs(study, _better)
    )
    qwen = study[3]
    blank = _m(
        "vlm", list("xxxxxx"), model="qwen", context="none", mode="score", prompt_set="study"
    )
    blank.variant = variants.BLANK  # how the no-image baseline marks its identity
    pairs = family.primary_pairs([*study, blank], _better)
    visual = [(a, b) for q, a, b in pairs if q == "VLM with image vs blank image"]
    assert visual == [(qwen, blank)]
    # the blank-image VLM is never itself "the VLM as asked"
    assert all(a is not blank for q, a, _ in pairs if q == "VLM vs CLIP probe")


@pytest.mark.parametrize("drop", ["clip_probe", "vlm"])
def test_without_its_parts_a_question_is_not_asked(drop):
    rest = [m for m in _study() if m.kind != drop]
    questions = {q for q, _, _ in family.primary_pairs(rest, _better)}
    assert "VLM vs CLIP probe" not in questions and "hybrid vs its better part" not in questions


def test_blank_image_answers_are_a_labelled_method_paired_with_their_vlm(tmp_path):
    from microqa.compare import answers, comparison
    from tests.test_robustness import ANSWERS, CLASS, RECORDS, _vlm_rows

    path = tmp_path / "answers.csv"
    rows = (
        _vlm_rows("original", ANSWERS["original"])
        + _vlm_rows("blank", ANSWERS["blank"])
        + _vlm_rows("gray", ANSWERS["gray"])  # a robustness transform: not a method
    )
    pd.DataFrame(rows).to_csv(path, index=False)
    folds = pd.Series(RECORDS["fold"].to_numpy(), index=RECORDS["micrograph_no"])
    vlms = answers.vlm_methods(answers.vlm_decisions(path, folds))
    by_label = {label(m.identity()): m for m in vlms}
    # the original's label is unchanged; the baseline says what it was shown
    assert set(by_label) == {"Qwen3-VL-8B-Instruct", "Qwen3-VL-8B-Instruct (blank image)"}
    qwen, blank = by_label["Qwen3-VL-8B-Instruct"], by_label["Qwen3-VL-8B-Instruct (blank image)"]
    assert (qwen.variant, blank.variant) == ("original", "blank")
    assert list(qwen.predictions) == [CLASS[a] for a in ANSWERS["original"]]
    assert list(blank.predictions) == [CLASS[a] for a in ANSWERS["blank"]]
    assert answers.hybrid_partners(vlms) == [qwen]  # never a hybrid's partner
    visual = [(q, a, b) for q, a, b in family.primary_pairs(vlms, _better)]
    assert visual == [("VLM with image vs blank image", qwen, blank)]
    assert comparison.study_pairs(vlms) == []  # no exploratory pair with the baseline
