"""hybrids.py: a cascade's and a fusion's cost, identity, answers and cross-fitting, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from microqa.compare import hybrids, methods

OPTIONS = ["x", "y"]


def _method(kind, probs, **fields):
    probs = pd.DataFrame(probs, columns=OPTIONS, index=range(1, len(probs) + 1))
    return methods.Method(
        kind, "technique", f"{kind} model", methods.argmax(probs), probs, **fields
    )


CLIP = {"weights": "pretrained", "seconds_per_image": 0.1, "prompt_set": "ensemble"}
VLM = {"context": "none", "mode": "score", "seconds_per_image": 2.0, "visual_tokens": 100.0}


def test_cost_and_identity_follow_the_share_sent_to_the_vlm():
    clip = _method("clip_zero_shot", [[0.9, 0.1], [0.2, 0.8]], **CLIP)
    vlm = _method("vlm", [[0.1, 0.9], [0.1, 0.9]], weights="random", **VLM)
    half = hybrids.hybrid("cascade", clip, vlm, clip.predictions, None, pd.Series([True, False]))
    assert half.notes["fraction_to_vlm"] == 0.5
    assert half.seconds_per_image == pytest.approx(0.1 + 0.5 * 2.0)
    assert half.visual_tokens == pytest.approx(0.5 * 100)
    # a random-weights part makes the hybrid a random-weights control
    assert half.weights == "random"
    assert (half.base, half.partner, half.prompt_set) == ("clip_zero_shot", "vlm model", "ensemble")
    assert (half.context, half.mode, half.model) == ("none", "score", "clip_zero_shot model")
    # fusion (nothing "sent"): every image costs both parts
    both = hybrids.hybrid("fusion", clip, vlm, clip.predictions, None, None)
    assert both.notes["fraction_to_vlm"] == 1.0
    assert both.seconds_per_image == pytest.approx(2.1) and both.visual_tokens == 100.0
    # no images: nothing sent, the CLIP cost alone
    none = hybrids.hybrid("cascade", clip, vlm, clip.predictions, None, pd.Series([], dtype=bool))
    assert none.notes["fraction_to_vlm"] == 0.0 and none.seconds_per_image == pytest.approx(0.1)


def test_unknown_costs_count_as_zero_and_pretrained_parts_stay_pretrained():
    clip = _method("clip_zero_shot", [[0.9, 0.1]], weights="pretrained")
    vlm = _method("vlm", [[0.1, 0.9]], weights="pretrained", seconds_per_image=2.0)
    fused = hybrids.hybrid("fusion", clip, vlm, clip.predictions, None, None)
    assert fused.seconds_per_image == pytest.approx(2.0)  # CLIP's time unknown: 0
    assert fused.visual_tokens is None and fused.weights == "pretrained"
    timed_clip = _method("clip_zero_shot", [[0.9, 0.1]], seconds_per_image=0.1)
    untimed_vlm = _method("vlm", [[0.1, 0.9]])
    fused = hybrids.hybrid("fusion", timed_clip, untimed_vlm, clip.predictions, None, None)
    assert fused.seconds_per_image == pytest.approx(0.1)


def test_a_sent_image_the_vlm_did_not_answer_has_no_answer():
    clip = _method("clip_zero_shot", [[0.55, 0.45], [0.9, 0.1]])  # margins 0.1 and 0.8
    vlm = _method("vlm", [[0.2, 0.8], [0.2, 0.8]])
    vlm.predictions = pd.Series([None, "y"], index=vlm.predictions.index, dtype=object)
    cascade = hybrids.apply_cascade(clip, vlm, threshold=0.5)
    assert cascade.predictions.loc[1] is None and cascade.predictions.loc[2] == "x"
    assert list(cascade.notes["sent"]) == [True, False]


def test_every_point_of_the_cascade_curve_is_what_apply_cascade_answers():
    """The curve computes its answers on arrays; each point must be the cascade itself at that
    threshold: tied margins enter together, an unanswered image sent is wrong, and the
    curve's images are truth's, in truth's order."""
    rng = np.random.default_rng(4)
    top = rng.choice([0.5, 0.6, 0.6, 0.8, 0.95], size=40)  # tied margins
    clip = _method("clip_zero_shot", np.column_stack([top, 1 - top]), **CLIP)
    vlm = _method("vlm", rng.dirichlet([1, 1], size=40), **VLM)
    answers = vlm.predictions.astype(object)
    answers.iloc[::7] = None  # images the VLM did not answer
    vlm.predictions = answers
    truth = pd.Series(rng.choice(OPTIONS, size=40), index=range(1, 41)).sample(
        frac=0.8, random_state=1
    )
    curve = hybrids.cascade_curve(clip, vlm, truth)
    assert len(curve) == 5  # -inf, inf and three margins (the lowest sends none, as -inf)
    for point in curve.itertuples():
        cascade = hybrids.apply_cascade(clip.restricted(truth.index), vlm, point.threshold)
        balanced, accuracy = hybrids.ranking(
            truth.to_numpy(), list(cascade.predictions.loc[truth.index])
        )
        assert (point.balanced_accuracy, point.accuracy) == (balanced, accuracy)
        assert point.fraction_to_vlm == cascade.notes["fraction_to_vlm"]


def test_fusion_is_the_normalised_geometric_mean_at_half_weight():
    clip = _method("clip_zero_shot", [[0.01, 0.99], [0.5, 0.5]])
    vlm = _method("vlm", [[0.9, 0.1], [0.8, 0.2]])
    # p ∝ sqrt(p_clip p_vlm): sqrt(0.009) : sqrt(0.099) and sqrt(0.4) : sqrt(0.1)
    row1 = np.sqrt([0.009, 0.099])
    row2 = np.sqrt([0.4, 0.1])
    expected = np.vstack([row1 / row1.sum(), row2 / row2.sum()])
    fused = hybrids.fuse(clip, vlm, 0.5)
    assert fused.probabilities.to_numpy() == pytest.approx(expected, abs=1e-5)
    assert list(fused.predictions) == ["y", "x"]
    assert hybrids.fuse(clip, vlm, 1.0).probabilities.to_numpy() == pytest.approx(
        clip.probabilities.to_numpy(), abs=1e-5
    )


def _chosen(probs):
    return methods.Method("clip_zero_shot", "technique", "m", methods.argmax(probs), probs)


def test_cross_fit_pools_each_folds_probabilities_from_the_method_chosen_elsewhere():
    ids = pd.Index(range(4))
    truth = pd.Series(list("xyxy"), index=ids)
    folds = pd.Series([0, 0, 1, 1], index=ids)
    right = pd.DataFrame([[0.9, 0.1], [0.2, 0.8]] * 2, index=ids, columns=OPTIONS)
    wrong = pd.DataFrame([[0.3, 0.7], [0.6, 0.4]] * 2, index=ids, columns=OPTIONS)
    # "good" is right on fold 0 only, "bad" on fold 1 only
    good = _chosen(pd.concat([right[:2], wrong[2:]]))
    bad = _chosen(pd.concat([wrong[:2], right[2:]]))
    candidates = {"good": good, "bad": bad}

    def fit(train):
        chosen = hybrids.choose_prompt_set(candidates, train)
        return {"prompt_set": chosen}, candidates[chosen]

    pooled, _ = hybrids.cross_fit(truth, folds, fit, good)
    # fold 0 from "bad" (chosen on fold 1), fold 1 from "good" (chosen on fold 0)
    expected = pd.concat([bad.probabilities[:2], good.probabilities[2:]])
    pd.testing.assert_frame_equal(pooled.probabilities, expected)
    assert list(pooled.predictions) == list(methods.argmax(expected))
