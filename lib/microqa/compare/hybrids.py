"""CLIP + VLM hybrids (cascade, fusion) and cross-fitting: every choice on the other fold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from microqa.clip.prompt_choice import pick_prompt_set, ranking
from microqa.compare.methods import Method, argmax

FUSION_WEIGHTS = tuple(np.round(np.linspace(0, 1, 11), 2))


def confidence(probs: pd.DataFrame, how: str = "margin") -> pd.Series:
    """Margin between the two highest probabilities (default), or the top probability."""
    values = np.sort(probs.to_numpy())  # each row ascending
    score = values[:, -1] - values[:, -2] if how == "margin" else values[:, -1]
    return pd.Series(score, index=probs.index)


def _balanced(truth: pd.Series, pred: pd.Series) -> tuple[float, float]:
    """(balanced accuracy, accuracy): the order every choice ranks by (`prompt_choice.ranking`)."""
    return ranking(truth.to_numpy(), list(pred.loc[truth.index].to_numpy()))


def apply_cascade(base: Method, vlm: Method, threshold: float) -> Method:
    """CLIP answers; images whose CLIP margin is below `threshold` go to the VLM (margins are
    finite: -inf sends none, inf sends all)."""
    ids = base.predictions.index.intersection(vlm.predictions.index)
    conf = confidence(base.probabilities.loc[ids])
    send = conf < threshold
    pred = base.predictions.loc[ids].where(~send, vlm.predictions.loc[ids])
    method = hybrid("cascade", base, vlm, pred.astype(object).where(pred.notna(), None), None, send)
    # per image, what the hand-off decided on (the galleries of notebook 05 show it)
    method.notes.update(confidence=conf, base_prediction=base.predictions.loc[ids])
    return method


def cascade_curve(base: Method, vlm: Method, truth: pd.Series) -> pd.DataFrame:
    """Accuracy and balanced accuracy as the least confident images are sent to the VLM: at
    each threshold, the answers `apply_cascade` gives (computed here on arrays, since a curve
    has a point per image)."""
    base = base.restricted(truth.index)
    ids = base.predictions.index.intersection(vlm.predictions.index)
    conf = confidence(base.probabilities.loc[ids]).to_numpy()
    at = ids.get_indexer(truth.index)
    if (at < 0).any():  # as apply_cascade's answers would: a truth image without one
        raise KeyError(f"images without a VLM answer: {list(truth.index[at < 0])}")
    own, other = (_answers(m.predictions.loc[ids])[at] for m in (base, vlm))
    conf_at, y = conf[at], truth.to_numpy()
    rows = []
    for threshold in [-np.inf, *np.unique(conf), np.inf]:
        answers = np.where(conf_at < threshold, other, own)
        balanced, accuracy = ranking(y, list(answers))
        rows.append(
            {
                "threshold": threshold,
                "fraction_to_vlm": float((conf < threshold).mean()) if len(ids) else 0.0,
                "accuracy": accuracy,
                "balanced_accuracy": balanced,
            }
        )
    return pd.DataFrame(rows).drop_duplicates("fraction_to_vlm")  # keeps the lowest threshold


def _answers(predictions: pd.Series) -> np.ndarray:
    """Answers as `apply_cascade` stores them: objects, None where there is no answer."""
    return predictions.astype(object).where(predictions.notna(), None).to_numpy(dtype=object)


def choose_threshold(curve: pd.DataFrame) -> float:
    """Best balanced accuracy on the choosing fold; ties go to the cheaper (fewer sent)."""
    best = curve.sort_values(["balanced_accuracy", "fraction_to_vlm"], ascending=[False, True])
    return float(best["threshold"].iloc[0])


def fuse(clip: Method, vlm: Method, weight: float) -> Method:
    """Weighted product of option probabilities: p ∝ p_clip^w · p_vlm^(1-w)."""
    ids = clip.probabilities.index.intersection(vlm.probabilities.index)
    eps = 1e-6
    log_p = weight * np.log(clip.probabilities.loc[ids] + eps) + (1 - weight) * np.log(
        vlm.probabilities.loc[ids] + eps
    )
    probs = np.exp(log_p)  # log_p >= log(eps): no underflow, no max to subtract
    probs = probs.div(probs.sum(axis=1), axis=0)
    return hybrid("fusion", clip, vlm, argmax(probs), probs, None)


def choose_fusion_weight(clip: Method, vlm: Method, truth: pd.Series) -> float:
    """The weight with the best (balanced accuracy, accuracy); ties go towards 0.5."""
    scored = [
        (*_balanced(truth, fuse(clip.restricted(truth.index), vlm, w).predictions), -abs(w - 0.5))
        for w in FUSION_WEIGHTS
    ]
    return float(FUSION_WEIGHTS[max(range(len(scored)), key=scored.__getitem__)])


def hybrid(kind, base: Method, vlm: Method, pred, probs, send) -> Method:
    fraction = 1.0 if send is None else float(send.mean()) if len(send) else 0.0
    return Method(
        kind=kind,
        task=base.task,
        model=base.model,
        predictions=pred,
        probabilities=probs,
        weights="random" if "random" in (base.weights, vlm.weights) else base.weights,
        base=base.kind,
        context=vlm.context,
        mode=vlm.mode,
        prompt_set=base.prompt_set,
        partner=vlm.model,
        base_weights=base.weights,
        partner_weights=vlm.weights,
        seconds_per_image=(base.seconds_per_image or 0.0)
        + fraction * (vlm.seconds_per_image or 0.0),
        visual_tokens=None if vlm.visual_tokens is None else fraction * vlm.visual_tokens,
        notes={"fraction_to_vlm": fraction, "sent": send},
    )


def reported_as(method: Method, choices: list[dict], clip: Method, vlm: Method) -> str:
    """'' for a distinct hybrid; else the part it is, and why. A cascade that sends no image to
    the VLM (threshold -inf in every fold) is its CLIP stage; a fusion whose weight is all on
    one part in every fold, or whose answers are one
    part's on every image, is that part. Such a row is reported as that part, never as a
    method of its own, and never tested against the VLM as a hybrid."""
    if method.kind == "cascade":
        # one that sends every image still differs from its VLM in cost: it stays a cascade
        sends_none = not method.notes["sent"].any()
        return "its CLIP stage (sends no image to the VLM)" if sends_none else ""
    weights = {c["weight"] for c in choices}
    ids = method.predictions.index
    for part, name, all_on_it in ((clip, "its CLIP stage", 1.0), (vlm, "its VLM", 0.0)):
        if weights == {all_on_it}:
            return f"{name} (fusion weight {all_on_it:g} on CLIP in every fold)"
        if list(method.predictions) == list(part.predictions.loc[ids]):
            return f"{name} (the fusion answers as it on every image)"
    return ""


Fit = Callable[[pd.Series], tuple[object, Method]]
PER_IMAGE_NOTES = ("sent", "confidence", "base_prediction")  # pooled over folds by cross_fit


def cross_fit(
    truth: pd.Series, folds: pd.Series, fit: Fit, template: Method
) -> tuple[Method, list]:
    """Pool, over the folds, the predictions on each fold of the method `fit` chose on the
    other folds' labels. Returns the pooled method and one choice row per fold."""
    preds, probs, choices = [], [], []
    per_image: dict[str, list[pd.Series]] = {key: [] for key in PER_IMAGE_NOTES}
    for fold in sorted(set(folds.loc[truth.index])):
        held_out = folds.loc[truth.index] == fold
        choice, method = fit(truth[~held_out])
        ids = truth.index[held_out]
        preds.append(method.predictions.loc[ids])
        probs.append(None if method.probabilities is None else method.probabilities.loc[ids])
        for key in PER_IMAGE_NOTES:
            if method.notes.get(key) is not None:
                per_image[key].append(method.notes[key].loc[ids])
        choices.append({"held_out_fold": fold, **choice, "n_chosen_on": int((~held_out).sum())})
    probabilities = None if any(p is None for p in probs) else pd.concat(probs).loc[truth.index]
    pooled = replace(
        template, predictions=pd.concat(preds).loc[truth.index], probabilities=probabilities
    )
    if per_image["sent"]:
        notes = {key: pd.concat(v).loc[truth.index] for key, v in per_image.items() if v}
        pooled.notes = {"fraction_to_vlm": float(notes["sent"].mean()), **notes}
    return pooled, choices


def choose_prompt_set(candidates: dict[str, Method], truth: pd.Series) -> str:
    """The CLIP stage's rule (`prompt_choice.pick_prompt_set`) on `truth`'s images, so notebook
    05 chooses as notebook 03 does."""
    return pick_prompt_set(
        {name: m.predictions.loc[truth.index] for name, m in candidates.items()}, truth.to_numpy()
    )
