"""VLM tables on synthetic answers.csv rows: position bias, rotation effect, score/generate
agreement, and the QA table on rotation-averaged decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from microqa import stats
from microqa.vlm import report, scoring
from microqa.vlm.questions import build_question
from tests.test_vlm_scoring import CLASSES, _answers, _letters


def _biased(truth_index: int, r: int, bias: float = 0.4, skill: float = 0.2) -> dict:
    """Letter A favoured by `bias`, the letter showing the truth by `skill`."""
    base = np.full(4, 0.1)
    base[0] += bias
    base[(truth_index - r) % 4] += skill
    return _letters(*(base / base.sum()))


def _study(n: int = 8, mode: str = "score", **kw) -> pd.DataFrame:
    frame = _answers(
        {
            i: (CLASSES[i % 4], [_biased(i % 4, r, **kw) for r in range(4)], [0.9] * 4)
            for i in range(n)
        },
        mode=mode,
    )
    return frame.assign(latency_s=0.1, visual_tokens=64, cached=False, raw_text="")


FOLDS = pd.Series(["f0", "f1"] * 4, index=range(8))
RECORDS = pd.DataFrame(
    {"micrograph_no": range(8), "specimen_group": [f"s{i // 2}" for i in range(8)]}
)


def test_position_bias_shows_a_letter_favoured_regardless_of_content():
    bias = report.position_bias_table(_study(skill=0.0))
    assert list(bias["position"]) == ["A", "B", "C", "D"]
    assert bias["truth_share"].tolist() == pytest.approx([0.25] * 4)  # every rotation asked
    assert bias.set_index("position")["chosen_share"].to_dict() == {
        "A": 1.0,
        "B": 0.0,
        "C": 0.0,
        "D": 0.0,
    }
    assert (bias["n_questions"] == 32).all() and (bias["rotations"] == 4).all()


def test_rotation_effect_reports_fixed_order_against_every_order():
    effect = report.rotation_effect_table(_study(), fold=FOLDS)
    (row,) = effect.itertuples()
    # fixed order: always "A" = Metal, right for 2 of 8 (balanced 0.25); every order: all right
    assert row.accuracy_fixed_order == pytest.approx(0.25)
    assert row.balanced_accuracy_fixed_order == pytest.approx(0.25)
    assert row.balanced_accuracy_rotated == pytest.approx(1.0)
    assert row.balanced_accuracy_change == pytest.approx(0.75)
    assert row.rotations_fixed_order == 1 and row.rotations_rotated == 4
    text = report.rotation_readme_text(effect)
    assert "| m | category / study | none | 8 | 0.250 | 1.000 | +0.750 |" in text


def test_rotation_readme_text_says_when_only_one_order_was_asked():
    fixed = _study()
    fixed = fixed[fixed["rotation"] == 0]
    text = report.rotation_readme_text(report.rotation_effect_table(fixed, fold=FOLDS))
    assert "not measured" in text


def test_agreement_of_score_and_generate_mode():
    score = _study()
    generate = _study(mode="generate")
    # image 0: one rotation unparseable -> generate gives no answer for it
    first = generate.index[(generate["micrograph_no"] == 0) & (generate["rotation"] == 1)]
    generate.loc[first, "prediction"] = None
    answers = pd.concat([score, generate], ignore_index=True)
    decided = scoring.decisions(answers, fold=FOLDS)
    table = report.agreement_table(answers, decided)
    (row,) = table.itertuples()
    # generate mode in every rotation follows letter A: never consistent -> never an answer
    assert row.n_images == 8 and row.generate_unanswered_rate == 1.0
    assert row.agreement == 0.0 and np.isnan(row.agreement_when_both_answered)
    assert row.generate_unparseable_rate == pytest.approx(1 / 32)
    assert row.score_accuracy == 1.0


def test_qa_table_on_decisions_reports_mass_unanswered_and_threshold():
    answers = _study()
    low = answers["micrograph_no"] == 3
    answers.loc[low, "letter_mass"] = 0.05
    qa = report.qa_table(answers, fold=FOLDS, records=RECORDS, n_boot=50)
    (row,) = qa.itertuples()
    assert row.n == 8 and row.rotations == 4 and row.questions_asked == 32
    assert row.letter_mass_mean == pytest.approx((7 * 0.9 + 0.05) / 8)
    # every answer is right, so neither fold's threshold abstains: nothing unanswered
    assert row.unanswered_rate == 0.0 and row.abstention_threshold == "f0: 0; f1: 0"
    assert row.accuracy == 1.0 and np.isnan(row.unparseable_rate)


def test_qa_table_counts_abstentions_as_unanswered():
    answers = _study()
    # images 1, 3, 5, 7 (fold f1) get a low mass and a wrong answer; the same in f0 for 0, 2
    for mno in (0, 2, 1, 3):
        rows = answers["micrograph_no"] == mno
        answers.loc[rows, "letter_mass"] = 0.05
        for idx in answers.index[rows]:
            r = int(answers.at[idx, "rotation"])
            q = build_question("category", rotation=r)
            wrong = CLASSES[(mno + 1) % 4]
            answers.at[idx, "probabilities"] = (
                '{"'
                + wrong
                + '": 0.7, "'
                + CLASSES[mno % 4]
                + '": 0.1, "'
                + CLASSES[(mno + 2) % 4]
                + '": 0.1, "'
                + CLASSES[(mno + 3) % 4]
                + '": 0.1}'
            )
            answers.at[idx, "prediction"] = wrong
            assert q.permutation  # a real displayed order
    qa = report.qa_table(answers, fold=FOLDS, records=RECORDS, n_boot=50)
    (row,) = qa.itertuples()
    assert row.abstained_rate == pytest.approx(0.5)
    # the headline is the forced choice: the 4 low-mass images answered (wrongly), none
    # abstained, so abstention cannot lower it
    assert row.answer_rule == "forced choice (no abstention)"
    assert row.unanswered_rate == 0.0 and row.accuracy == pytest.approx(0.5)
    truth = [CLASSES[m % 4] for m in range(8)]
    forced = [CLASSES[(m + 1) % 4] if m < 4 else CLASSES[m % 4] for m in range(8)]
    assert row.balanced_accuracy == pytest.approx(balanced_accuracy_score(truth, forced))
    # beside it, the selective result: the 4 right answers kept, the 4 wrong ones abstained.
    # Effective reliability by hand: each class has one right (+1) and one abstained (0) image
    assert row.coverage == pytest.approx(0.5) and row.n_answered == 4
    assert row.balanced_accuracy_answered == pytest.approx(1.0)
    assert row.effective_reliability == pytest.approx(0.5)
    assert row.effective_reliability_ci_low <= 0.5 <= row.effective_reliability_ci_high
    # Top-2 follows the same rule: forced over every image; selective over the answered ones
    # (the abstained images' true class is one of three tied at 0.1 behind the wrong one)
    assert row.top2_accuracy_answered == pytest.approx(1.0)
    assert row.top2_accuracy < 1.0


def test_qa_table_intervals_resample_specimens_not_images(monkeypatch):
    seen, summarise = [], stats.summarise

    def spy(y_true, y_pred, groups, **kwargs):
        seen.append(list(groups))
        return summarise(y_true, y_pred, groups, **kwargs)

    monkeypatch.setattr(report.stats, "summarise", spy)
    answers = _study()
    (row,) = report.qa_table(answers, fold=FOLDS, records=RECORDS, n_boot=5).itertuples()
    decided = scoring.decisions(answers, fold=FOLDS)
    specimens = [f"s{m // 2}" for m in decided["micrograph_no"]]
    assert seen and all(groups == specimens for groups in seen)  # forced and selective
    assert row.n_specimens == 4 and row.n == 8
    with pytest.raises(ValueError, match="no record"):
        report.qa_table(answers, fold=FOLDS, records=RECORDS.iloc[:6], n_boot=5)


def test_without_abstention_forced_and_selective_agree():
    qa = report.qa_table(_study(), fold=FOLDS, records=RECORDS, n_boot=50)
    (row,) = qa.itertuples()
    assert row.coverage == 1.0 and row.balanced_accuracy_answered == row.balanced_accuracy
    assert row.effective_reliability == pytest.approx(2 * row.balanced_accuracy - 1)
