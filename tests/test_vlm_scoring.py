"""The one letter-scoring rule (both backends), rotation-averaged decisions, cross-fitted
abstention: known answers on small synthetic cases where a wrong rule shows."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from microqa.vlm import scoring
from microqa.vlm.questions import build_question, rotations

CLASSES = ("Metal or alloy", "Ceramic", "Polymer", "Composite")


# --- the scoring rule ----------------------------------------------------------------------------


def _top(pairs):
    return [(token, math.log(p)) for token, p in pairs]


# "A" in two spellings (0.3 + 0.2), "B" in one (0.2), "a" the article (0.25), "The" (0.05).
SPLIT = _top([("A", 0.3), ("a", 0.25), (" A", 0.2), (" B", 0.2), ("The", 0.05)])


def _check_rule(rule) -> None:
    scores = rule(SPLIT, ["A", "B"])
    assert scores.letter_mass == pytest.approx(0.7)
    assert scores.probabilities["A"] == pytest.approx(0.5 / 0.7)
    assert scores.probabilities["B"] == pytest.approx(0.2 / 0.7)


def test_a_letter_is_the_logsumexp_of_its_spellings_case_sensitive():
    _check_rule(scoring.letter_scores)
    scores = scoring.letter_scores(SPLIT, ["A", "B"])
    assert scores.log_probs["A"] == pytest.approx(math.log(0.5))


def test_max_over_spellings_fails_the_rule_check():
    def max_rule(top, letters):
        best = {}
        for token, lp in top:
            if token.strip() in letters:  # also the old rule's other sin: case folding
                best[token.strip()] = max(best.get(token.strip(), -np.inf), lp)
        mass = sum(math.exp(v) for v in best.values())
        return scoring.LetterScores({k: math.exp(v) / mass for k, v in best.items()}, best, mass)

    with pytest.raises(AssertionError):
        _check_rule(max_rule)


def test_upper_casing_tokens_fails_the_rule_check():
    def folding_rule(top, letters):
        return scoring.letter_scores([(t.upper(), lp) for t, lp in top], letters)

    with pytest.raises(AssertionError):
        _check_rule(folding_rule)


def test_absent_letters_get_a_bounded_share_and_none_listed_is_no_answer():
    top = _top([("B", 0.5), ("The", 0.3)] + [(f"x{i}", 0.01) for i in range(18)])
    scores = scoring.letter_scores(top, ["A", "B", "C"])
    # leftover 0.02 over two absent letters, capped by 2 spellings x 0.01: 0.01 each
    assert scores.letter_mass == pytest.approx(0.52)
    assert scores.probabilities["A"] == pytest.approx(0.01 / 0.52) == scores.probabilities["C"]
    assert scoring.letter_scores(top[1:], ["A", "B", "C"]).probabilities == {}
    assert scoring.letter_scores(top[1:], ["A", "B", "C"]).letter_mass == 0.0


@pytest.mark.parametrize("bad", [float("nan"), 0.5, float("inf")])
def test_invalid_log_probabilities_are_refused(bad):
    with pytest.raises(ValueError, match="invalid log-probabilities"):
        scoring.letter_scores([("A", bad), ("B", -1.0)], ["A", "B"])


@pytest.mark.integration  # builds and loads a tiny VLM of each family
@pytest.mark.parametrize("family", ["qwen3_vl", "llava_next"])
def test_hf_backend_and_the_rule_agree_on_the_same_log_probabilities(tmp_path, family):
    """The hf backend's letter probabilities and letter mass equal `letter_scores` fed the
    same next-token distribution as a server would list it (every token, as text)."""
    import torch

    from microqa.vlm import hf, tiny
    from microqa.vlm.base import VLMRequest
    from tests.test_vlm_hf import micrograph

    backend = hf.HFBackend(str(tiny.build_tiny_vlm(family, tmp_path / family)))
    question = build_question("category", rotation=1)
    request = VLMRequest(micrograph(200, 150, 3), question.prompt)
    with torch.inference_mode():
        logprobs = torch.log_softmax(backend._next_token_logits(backend._inputs([request])), -1)
    tokenizer = backend.processor.tokenizer
    # token text as a server reports it: the word-start marker is a space
    texts = [
        t.replace("Ġ", " ").replace("▁", " ")
        for t in tokenizer.convert_ids_to_tokens(list(range(logprobs.shape[-1])))
    ]
    listed = [(t, float(lp)) for t, lp in zip(texts, logprobs[0].double(), strict=True)]
    expected = scoring.letter_scores(listed, list(question.letters))
    result = backend.score([request], list(question.letters))[0]
    assert result.letter_mass == pytest.approx(expected.letter_mass, rel=1e-4)
    for letter in question.letters:
        assert result.probabilities[letter] == pytest.approx(
            expected.probabilities[letter], abs=1e-5
        )


# --- decisions over rotations -------------------------------------------------------------------


def _answers(
    per_image: dict[int, tuple[str, list[dict[str, float] | None], list[float]]],
    *,
    mode: str = "score",
    model: str = "m",
) -> pd.DataFrame:
    """answers.csv rows: per image (truth, per-rotation LETTER probabilities, masses)."""
    rows = []
    for mno, (truth, per_rotation, masses) in per_image.items():
        for r, (letter_probs, mass) in enumerate(zip(per_rotation, masses, strict=True)):
            q = build_question("category", rotation=r)
            probs = (
                json.dumps({q.class_of(k): v for k, v in letter_probs.items()})
                if mode == "score" and letter_probs
                else ""
            )
            choice = None
            if letter_probs:
                choice = q.class_of(max(letter_probs, key=letter_probs.get))
            rows.append(
                {
                    "micrograph_no": mno,
                    "model": model,
                    "backend": "hf",
                    "weights": "random",
                    "task": "category",
                    "context": "none",
                    "mode": mode,
                    "prompt_set": "study",
                    "permutation": q.permutation,
                    "rotation": r,
                    "truth": truth,
                    "prediction": choice,
                    "probabilities": probs,
                    "letter_mass": mass if mode == "score" else "",
                }
            )
    return pd.DataFrame(rows)


def _letters(a, b, c, d):
    return {"A": a, "B": b, "C": c, "D": d}


def test_class_probability_is_the_mean_over_rotations_of_its_letter():
    assert list(rotations("category")) == [0, 1, 2, 3]
    # A model that always says "A" with 0.7: under rotation r, letter A shows class r.
    always_a = [_letters(0.7, 0.1, 0.1, 0.1)] * 4
    frame = _answers({1: ("Ceramic", always_a, [0.9, 0.8, 0.7, 0.6])})
    decided = scoring.aggregate(frame)
    probs = json.loads(decided["probabilities"].iloc[0])
    assert probs == pytest.approx(dict.fromkeys(CLASSES, 0.25))
    assert decided["letter_mass"].iloc[0] == pytest.approx(0.75)
    assert decided["n_rotations"].iloc[0] == 4 == decided["n_answered"].iloc[0]
    # fixed order: rotation 0 only, where "A" is Metal
    fixed = scoring.aggregate(frame, fixed_order=True)
    assert fixed["choice"].iloc[0] == "Metal or alloy" and fixed["n_rotations"].iloc[0] == 1


def test_rotation_removes_a_letter_bias_that_fixed_order_rewards():
    # Letter A gets +0.4 everywhere; the content favours the true class by +0.2.
    def biased(truth_index, r):
        base = np.full(4, 0.1)
        base[0] += 0.4
        base[(truth_index - r) % 4] += 0.2  # the letter showing the truth under rotation r
        return _letters(*(base / base.sum()))

    frame = _answers(
        {i: (CLASSES[i % 4], [biased(i % 4, r) for r in range(4)], [0.9] * 4) for i in range(8)}
    )
    decided = scoring.decisions(frame, fold=pd.Series("f0", index=range(8)))
    assert (decided["prediction"] == decided["truth"]).all()
    fixed = scoring.decisions(frame, fold=pd.Series("f0", index=range(8)), fixed_order=True)
    assert (fixed["prediction"] == "Metal or alloy").all()  # letter A is Metal in fixed order


def test_a_failed_rotation_is_left_out_of_the_mean():
    frame = _answers(
        {1: ("Polymer", [_letters(0.1, 0.1, 0.7, 0.1), None, None, None], [0.8, 0, 0, 0])}
    )
    frame.loc[1:, "letter_mass"] = np.nan  # failed answers carry no mass
    decided = scoring.aggregate(frame)
    assert decided["choice"].iloc[0] == "Polymer" and decided["n_answered"].iloc[0] == 1
    assert decided["letter_mass"].iloc[0] == pytest.approx(0.8)


def test_generate_mode_needs_the_same_class_in_every_rotation():
    def picks(*classes):
        out = []
        for r, cls in enumerate(classes):
            q = build_question("category", rotation=r)
            out.append(None if cls is None else {q.letters[q.classes.index(cls)]: 1.0})
        return out

    consistent = picks("Ceramic", "Ceramic", "Ceramic", "Ceramic")
    letter_follower = [{"A": 1.0}] * 4  # always "A": four different classes
    one_unread = picks("Ceramic", None, "Ceramic", "Ceramic")
    frame = _answers(
        {
            1: ("Ceramic", consistent, [0] * 4),
            2: ("Ceramic", letter_follower, [0] * 4),
            3: ("Ceramic", one_unread, [0] * 4),
        },
        mode="generate",
    )
    decided = scoring.decisions(frame, fold=pd.Series("f", index=[1, 2, 3]))
    assert decided.set_index("micrograph_no")["prediction"].to_dict() == {
        1: "Ceramic",
        2: None,
        3: None,
    }
    assert decided["letter_mass"].isna().all() and not decided["abstained"].any()


def test_rows_without_rotation_columns_are_rotation_zero():
    frame = _answers({1: ("Ceramic", [_letters(0.1, 0.7, 0.1, 0.1)], [0.5])})
    frame = frame.drop(columns=["rotation", "letter_mass"])
    decided = scoring.decisions(frame, fold=pd.Series("f", index=[1]))
    assert decided["prediction"].iloc[0] == "Ceramic" and decided["n_rotations"].iloc[0] == 1


# --- abstention ---------------------------------------------------------------------------------


def test_choose_threshold_known_answer():
    truth = ["Ceramic"] * 4
    choice = ["Ceramic", "Ceramic", "Metal or alloy", "Metal or alloy"]
    # the two wrong answers have low mass: abstaining on them turns -1 into 0
    assert scoring.choose_threshold(truth, choice, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(0.8)
    # all right: never abstain
    assert scoring.choose_threshold(truth, ["Ceramic"] * 4, [0.9, 0.8, 0.2, 0.1]) == 0.0
    # accuracy could never prefer abstaining; reliability with cost 0 is accuracy
    assert scoring.choose_threshold(truth, choice, [0.9, 0.8, 0.2, 0.1], cost=0.0) == 0.0


def test_effective_reliability_is_balanced_over_classes():
    truth = ["a", "a", "a", "b"]
    pred = ["a", "a", "a", None]
    assert scoring.effective_reliability(truth, pred) == pytest.approx((1.0 + 0.0) / 2)
    assert scoring.effective_reliability(truth, pred, balanced=False) == pytest.approx(0.75)
    assert scoring.effective_reliability(["a", "b"], ["b", "b"]) == pytest.approx(0.0)


def _two_fold_frame(low_mass_right_in: str) -> tuple[pd.DataFrame, pd.Series]:
    """Fold 'select': low-mass answers are wrong. Fold 'evaluate': as `low_mass_right_in`."""
    per_image, fold = {}, {}
    for i in range(20):
        label = "select" if i < 10 else "evaluate"
        low = i % 2 == 1
        right = not low or (label == "evaluate" and low_mass_right_in == "evaluate")
        truth = CLASSES[i % 4]
        favoured = truth if right else CLASSES[(i + 1) % 4]
        per_rotation = []
        for r in range(4):
            q = build_question("category", rotation=r)
            probs = dict.fromkeys(q.letters, 0.1)
            probs[q.letters[q.classes.index(favoured)]] = 0.7
            per_rotation.append(probs)
        per_image[i] = (truth, per_rotation, [0.1 + 0.01 * i if low else 0.9] * 4)
        fold[i] = label
    return _answers(per_image), pd.Series(fold)


def test_threshold_is_chosen_on_the_other_fold():
    frame, fold = _two_fold_frame("nowhere")
    decided = scoring.decisions(frame, fold=fold)
    by_fold = decided.groupby("fold")["threshold"].first()
    # chosen on 'select' (low masses 0.11..0.19 wrong) -> applied to 'evaluate', and vice versa
    assert by_fold["evaluate"] == pytest.approx(0.9)
    assert by_fold["select"] == pytest.approx(0.9)
    ev = decided[decided["fold"] == "evaluate"]
    assert ev["prediction"].isna().sum() == 5 and ev["abstained"].sum() == 5
    table = scoring.thresholds(decided)
    assert set(table["fold"]) == {"select", "evaluate"} and table["n"].eq(10).all()


def test_a_folds_own_answers_never_set_its_threshold():
    # In 'evaluate' the low-mass answers are right: its own data would say "never abstain",
    # but its threshold comes from 'select' only, so they are abstained on (and count wrong).
    frame, fold = _two_fold_frame("evaluate")
    decided = scoring.decisions(frame, fold=fold)
    ev = decided[decided["fold"] == "evaluate"]
    assert ev["threshold"].iloc[0] == pytest.approx(0.9) and ev["abstained"].sum() == 5
    sel = decided[decided["fold"] == "select"]
    assert sel["threshold"].iloc[0] == 0.0  # chosen on 'evaluate', where abstaining never helps
    never = scoring.decisions(frame, fold=fold, abstain=False)
    assert never["prediction"].notna().all() and (never["threshold"] == 0).all()


def test_images_without_a_fold_are_an_error():
    frame, fold = _two_fold_frame("nowhere")
    with pytest.raises(ValueError, match="no fold"):
        scoring.decisions(frame, fold=fold.iloc[:5])
    with pytest.raises(ValueError, match="fold= or records="):
        scoring.decisions(frame)


def test_default_folds_follow_the_specimen_split():
    records = pd.DataFrame({"micrograph_no": [1, 2, 3, 4], "specimen_group": ["x", "x", "y", "z"]})
    folds = scoring.default_folds(records)
    assert list(folds.index) == [1, 2, 3, 4] and folds[1] == folds[2]


def test_the_abstention_threshold_is_class_balanced_where_accuracy_weighting_differs():
    # low mass (0.2): 6 right majority answers and the 2 wrong minority ones; high mass (0.9):
    # 10 right majority and 2 right minority answers. Balanced effective reliability: answer
    # all 0.5, abstain below 0.9 0.5625; unbalanced: 0.8 against 0.6
    truth = ["a"] * 6 + ["b"] * 2 + ["a"] * 10 + ["b"] * 2
    choice = ["a"] * 6 + ["a"] * 2 + ["a"] * 10 + ["b"] * 2
    mass = [0.2] * 8 + [0.9] * 12
    kept = [c if m >= 0.9 else None for c, m in zip(choice, mass, strict=True)]
    assert scoring.effective_reliability(truth, kept) == pytest.approx(0.5625)
    assert scoring.effective_reliability(truth, choice) == pytest.approx(0.5)
    unbalanced = {
        t: scoring.effective_reliability(truth, p, balanced=False)
        for t, p in ((0.0, choice), (0.9, kept))
    }
    assert max(unbalanced, key=unbalanced.get) == 0.0  # the unbalanced objective would differ
    assert scoring.choose_threshold(truth, choice, mass) == pytest.approx(0.9)
