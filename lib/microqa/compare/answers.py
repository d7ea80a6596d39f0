"""The VLM stage's answers as methods of the comparison: one decision per image (rotation-
averaged, abstention cross-fitted over the same folds as every other choice), one `Method` per
model x task x context x mode x prompt set x image variant, and which of them a hybrid is built
with.

The methods are the answers about the micrographs themselves and the no-image baseline (the
same VLM shown a blank image, `data.variants.BLANK`: its own labelled method, paired with the
VLM in the primary family, never a hybrid's partner). The answers under the label-preserving
transforms (flip, rotation, grayscale, masking) are not methods: they feed the robustness
table (`compare.robustness.study_tables`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from microqa.compare.methods import Method
from microqa.data import taxonomy, variants
from microqa.vlm import outputs as vlm_outputs
from microqa.vlm import scoring

METHOD_VARIANTS = (variants.ORIGINAL, variants.BLANK)  # the images a comparison method is shown


def vlm_decisions(
    path: Path, folds: pd.Series, shown: tuple[str, ...] = METHOD_VARIANTS
) -> pd.DataFrame:
    """THE one reader of VLM answers: `vlm.scoring`'s decisions (class probabilities averaged
    over the option rotations, abstention below a letter-mass threshold chosen on the other
    fold of specimens), one per (model, backend, weights, task, context, mode, prompt_set,
    variant, micrograph_no), with what the decision cost: seconds and visual tokens of every
    question asked for it (all rotations). Probabilities a dict by class name; prediction None
    when unanswered. `shown`: the image variants read (each decided on its own: a blank
    image's abstention threshold is chosen on its own answers)."""
    if not path.exists():
        return pd.DataFrame()
    answers = vlm_outputs.load_answers(path, variant=None)
    answers = answers[answers["micrograph_no"].isin(folds.index) & answers["variant"].isin(shown)]
    if answers.empty:
        return pd.DataFrame()
    keys = [*scoring.DECISION_KEYS, "variant"]
    parts = []
    for variant, asked in answers.groupby("variant", sort=True):
        parts.append(scoring.decisions(asked, fold=folds).assign(variant=variant))
    decided = pd.concat(parts, ignore_index=True)
    cost = answers.groupby(keys).agg(  # keys are never NaN: read as text
        latency_s=("latency_s", "sum"), visual_tokens=("visual_tokens", "mean")
    )
    decided = decided.join(cost, on=keys)
    # JSON, or "" where the mode has no probabilities (generate) or no rotation was answered
    decided["probabilities"] = [json.loads(t) if t else None for t in decided["probabilities"]]
    return decided


def vlm_methods(decisions: pd.DataFrame) -> list[Method]:
    """One method per VLM x context x mode x prompt set x image variant, answering with the
    forced choice (the answer before abstention; the VLM table's selective columns show what
    abstaining gives)."""
    out = []
    if decisions.empty:
        return out
    if "variant" not in decisions:  # decisions of the originals only
        decisions = decisions.assign(variant=variants.ORIGINAL)
    keys = ["model", "task", "context", "mode", "prompt_set", "variant"]
    for (model, task, context, mode, prompt_set, variant), group in decisions.groupby(keys):
        if task not in taxonomy.TASKS:
            continue
        group = group.set_index("micrograph_no")
        classes = list(taxonomy.TASKS[task][1])
        probs = None
        if mode == "score" and group["probabilities"].notna().all():
            probs = pd.DataFrame(list(group["probabilities"]), index=group.index)
            probs = probs.reindex(columns=classes).fillna(0.0)
        tokens = group["visual_tokens"]
        out.append(
            Method(
                kind="vlm",
                task=task,
                model=str(model),
                # the forced choice (no abstention), as the VLM table's headline
                predictions=group["choice"].astype(object).where(group["choice"].notna(), None),
                probabilities=probs,
                weights=str(group["weights"].iloc[0]),
                context=str(context),
                mode=str(mode),
                prompt_set=str(prompt_set),
                variant=str(variant),
                seconds_per_image=float(group["latency_s"].mean()),
                visual_tokens=float(tokens.mean()) if tokens.notna().any() else None,
                # what selective prediction orders by: the answer before abstention and the
                # letter mass it was abstained on
                notes={"choice": group["choice"], "letter_mass": group["letter_mass"]},
            )
        )
    return out


def hybrid_partners(vlms: list[Method]) -> list[Method]:
    """The VLM answers a hybrid uses: about the micrograph itself (never the blank-image
    baseline), asked without CLIP context (the context variants already combine the two
    inside the prompt), in the study's wording where the task has it."""
    plain = [v for v in vlms if v.context == "none" and v.variant == variants.ORIGINAL]
    study = [v for v in plain if v.prompt_set == "study"]
    return study or plain
