"""The methods the study compares, as data: identity columns, predictions, probabilities.

A method's identity is data (`IDENTITY`: kind, base, model, weights, context, mode,
prompt_set, partner, variant); its display label is derived from it by `label`, never parsed
back. `variant` is the image the method was shown (`data.variants`): "original" for every
method but the no-image baseline, a VLM shown a blank image ("… (blank image)").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from microqa.clip.outputs import SCORE_PROMPT_SETS
from microqa.data import taxonomy, variants

IDENTITY = (
    "kind",
    "base",
    "model",
    "weights",
    "context",
    "mode",
    "prompt_set",
    "partner",
    "variant",
)
CONTEXT_LABELS = {
    "none": "",
    "clip_topk": " + CLIP top-k labels",
    "clip_neighbours": " + retrieved expert metadata of nearest other specimens (supervised)",
}
PROBE_LABELS = {
    SCORE_PROMPT_SETS["logreg"]: "logistic probe",
    SCORE_PROMPT_SETS["knn"]: "5-NN probe",
}
BASELINE_LABELS = {  # `compare.baselines`: the rows every other row is read against
    "chance": "chance (uniform over the options)",
    "majority": "majority class (chosen on the other fold)",
}


@dataclass
class Method:
    """One method's answers to one task: predictions (class or None) and, where it has them,
    probabilities over the task's classes (rows: micrograph_no)."""

    kind: str  # clip_zero_shot | clip_probe | vlm | cascade | fusion | chance | majority
    task: str
    model: str
    predictions: pd.Series
    probabilities: pd.DataFrame | None = None
    weights: str = "n/a"  # pretrained | random
    base: str = ""  # hybrids: the kind of their CLIP stage
    context: str = ""  # VLMs and hybrids: none | clip_topk | clip_neighbours
    mode: str = ""  # VLMs and hybrids: score | generate
    prompt_set: str = ""  # zero-shot: set (or "cross-fitted"); probes: which probe
    partner: str = ""  # hybrids: the VLM
    # the image shown (data.variants): "blank" for the no-image baseline, else "original"
    variant: str = variants.ORIGINAL
    seconds_per_image: float | None = None
    visual_tokens: float | None = None
    # hybrids: the weights of each part (`weights` says "random" when either part is)
    base_weights: str = ""
    partner_weights: str = ""
    notes: dict = field(default_factory=dict, compare=False)

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY}

    def restricted(self, ids) -> Method:
        probs = None if self.probabilities is None else self.probabilities.loc[ids]
        return replace(self, predictions=self.predictions.loc[ids], probabilities=probs)


PART_NAMES = {"clip_zero_shot": "zero-shot CLIP", "clip_probe": "probe"}


def part_weights(method: Method) -> str:
    """A hybrid's parts and their weights ("probe: pretrained · VLM: random"); '' otherwise."""
    if method.kind not in ("cascade", "fusion"):
        return ""
    stage = PART_NAMES.get(method.base, method.base)
    return f"{stage}: {method.base_weights} · VLM: {method.partner_weights}"


def in_main_mode(modes: pd.Series) -> pd.Series:
    """True for the rows of the study's main answer mode: CLIP rows (no mode) and score-mode
    VLM rows. Generate-mode rows answer the score/generate agreement subset, a check that stays
    in the full tables but not in headlines or figures."""
    return modes.fillna("score").ne("generate")


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def short_name(model: str) -> str:
    """A model as a reader knows it: a hub id or a local directory by its last part, an
    open_clip `ARCH:/path/weights.pt` by its architecture and file name (never a path); names
    with spaces ("reference ViT-B/32 (pretrained)") are already readable."""
    text = str(model)
    if " " in text:
        return text
    head, colon, tail = text.rpartition(":")  # the last colon: "probe:ARCH:/path" too
    if colon and (tail.startswith(("/", "~", ".")) or tail.endswith(WEIGHT_FILE_SUFFIXES)):
        return f"{head}:{Path(tail).name}"
    return Path(text).name if "/" in text and not colon else text


def variant_label(variant: str) -> str:
    """What a label adds for the image a method was shown ("" for the micrograph itself)."""
    if variant in ("", variants.ORIGINAL):
        return ""
    return " (blank image)" if variant == variants.BLANK else f" ({variant} image)"


def label(identity: dict) -> str:
    """The display label of a method identity (derived, one way)."""
    kind, model = identity["kind"], short_name(identity["model"])
    if kind in BASELINE_LABELS:
        return BASELINE_LABELS[kind]
    if kind == "clip_zero_shot":
        return f"CLIP {model} zero-shot"
    if kind == "clip_probe":
        return f"CLIP {PROBE_LABELS.get(identity['prompt_set'], identity['prompt_set'])} ({model})"
    vlm = short_name(identity["partner"] if kind in ("cascade", "fusion") else model)
    vlm += CONTEXT_LABELS.get(identity["context"], f" + {identity['context']}")
    vlm += " (generated)" if identity["mode"] == "generate" else ""
    vlm += variant_label(identity.get("variant", variants.ORIGINAL))
    if kind == "vlm":
        return vlm + (
            ", earlier study's prompt" if identity["prompt_set"] == "earlier_study" else ""
        )
    clip = label({**identity, "kind": identity["base"]})
    return f"{kind} {clip} → {vlm}"


def pivot(long: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    table = long.pivot_table(index="micrograph_no", columns="class", values="probability")
    return table.reindex(columns=list(classes)).fillna(0.0)


def argmax(probs: pd.DataFrame) -> pd.Series:
    return pd.Series(probs.columns[np.argmax(probs.to_numpy(), axis=1)], index=probs.index)


def clip_methods(scores: pd.DataFrame, timing: dict, *, kind: str) -> list[Method]:
    """One method per CLIP model x task x prompt set (zero-shot) or probe (probe scores)."""
    out: list[Method] = []
    if scores.empty:
        return out
    # grouped by weights too, like clip.report: a model name run with pretrained and with random
    # weights is two methods, never one average of both
    for (model, weights, task, prompt_set), group in scores.groupby(
        ["model", "weights", "task", "prompt_set"]
    ):
        if task not in taxonomy.TASKS:
            continue
        probs = pivot(group, taxonomy.TASKS[task][1])
        out.append(
            Method(
                kind=kind,
                task=task,
                model=str(model).removeprefix("probe:"),
                predictions=argmax(probs),
                probabilities=probs,
                weights=str(weights),
                prompt_set=str(prompt_set),
                seconds_per_image=_embedding_cost(str(model), timing),
            )
        )
    return out


def _embedding_cost(model: str, timing: dict) -> float | None:
    """Measured CLIP seconds per image; a probe on ViT-B/32 features costs a ViT-B/32 pass
    (random weights have the same FLOPs, so the measured random-weight time stands in)."""
    if model in timing:
        return timing[model].get("seconds_per_image")
    if model.startswith("probe:") and ("ViT-B/32" in model or "ViT-B-32" in model):
        same_arch = [v for k, v in timing.items() if k.startswith("ViT-B-32")]
        return same_arch[0].get("seconds_per_image") if same_arch else None
    return None
