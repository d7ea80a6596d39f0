"""The primary family: the study's few named comparisons, stated here before any result.

Every task asks the same questions of the methods it has (a minus b):

1. **each VLM vs the CLIP probe** — each VLM as the study asks it (no CLIP context, the
   study's wording, the main answer mode) against the logistic probe on CLIP features. Each
   VLM, not "the best one": picking the winner on the scored images would let the test
   choose its own hypothesis.
2. **VLM with vs without CLIP context** — the same VLM (main mode, study wording) given the
   CLIP stage's top-k labels, against itself without them.
3. **hybrid vs its better part** — for each VLM of question 1, the hybrid of the logistic probe
   with it (the fusion where the VLM has probabilities, else the cascade) against the better
   of its two parts by balanced accuracy on the compared images. Comparing with the *better*
   part is the conservative choice for the claim "combining helps": it can only make the
   difference smaller.
4. **CLIP zero-shot vs the CLIP probe** — each CLIP model's cross-fitted zero-shot against the
   logistic probe.
5. **visual gain** — the same VLM with the image against itself shown a blank image (the
   no-image baseline, `data.variants.BLANK`). Defined by method identity: the pair appears
   when a run has asked the blank-image variant.

Holm corrects within this family only, over all tasks together (one family, as the README
shows it); every other pair the comparison computes (`comparison.study_pairs`) is
exploratory, in its own table, corrected only among the exploratory pairs. `paired_tables`
tests both families, each with enough sign-flip patterns for its size.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from microqa import metrics, stats
from microqa.compare.methods import Method, label
from microqa.data import variants

PROBE = "logreg-grouped-cv"  # the CLIP probe of the primary family: logistic, grouped CV
STUDY_WORDING = "study"
MAIN_MODE = "score"  # the study's main answer mode (`methods.in_main_mode`)
CLIP_CONTEXT = "clip_topk"

PRIMARY_QUESTIONS = (
    "VLM vs CLIP probe",
    "VLM with vs without CLIP context",
    "hybrid vs its better part",
    "CLIP zero-shot vs CLIP probe",
    "VLM with image vs blank image",
)


def shows_blank(method: Method) -> bool:
    """A VLM asked with a blank image in place of the micrograph (the no-image baseline)."""
    return variants.BLANK in (getattr(method, "variant", ""), method.context, method.prompt_set)


def _as_asked(method: Method, context: str = "none") -> bool:
    """A VLM as the study asks it: this context, the study's wording, the main mode."""
    return (
        method.kind == "vlm"
        and method.context == context
        and method.prompt_set == STUDY_WORDING
        and method.mode == MAIN_MODE
        and not shows_blank(method)
    )


def primary_pairs(
    methods: list[Method], better: Callable[[Method, Method], Method]
) -> list[tuple[str, Method, Method]]:
    """The primary family of one task's methods as (question, a, b). `better(x, y)` returns
    the part with the higher balanced accuracy on the images both answered."""
    vlms = [m for m in methods if _as_asked(m)]
    probes = [m for m in methods if m.kind == "clip_probe" and m.prompt_set == PROBE]
    pairs = [(PRIMARY_QUESTIONS[0], v, p) for v in vlms for p in probes]
    for v in vlms:
        pairs += [
            (PRIMARY_QUESTIONS[1], c, v)
            for c in methods
            if _as_asked(c, CLIP_CONTEXT) and c.model == v.model and c.weights == v.weights
        ]
    for v in vlms:
        for p in probes:
            made = [
                h
                for h in methods
                if h.kind in ("cascade", "fusion")
                and (h.base, h.model, h.prompt_set) == (p.kind, p.model, p.prompt_set)
                and (h.partner, h.context, h.mode) == (v.model, v.context, v.mode)
            ]
            kinds = {h.kind: h for h in made}
            chosen = kinds.get("fusion", kinds.get("cascade"))
            if chosen is not None:
                pairs.append((PRIMARY_QUESTIONS[2], chosen, better(v, p)))
    pairs += [
        (PRIMARY_QUESTIONS[3], z, p) for z in methods if z.kind == "clip_zero_shot" for p in probes
    ]
    for v in vlms:
        pairs += [
            (PRIMARY_QUESTIONS[4], v, blank)
            for blank in methods
            if blank.kind == "vlm"
            and shows_blank(blank)
            and (blank.model, blank.weights, blank.mode) == (v.model, v.weights, v.mode)
        ]
    return pairs


def better_part(labelled: pd.Series):
    """`better(x, y)` for `family.primary_pairs`: the part with the higher balanced accuracy on
    the images both answered (ties: the first)."""

    def better(x: Method, y: Method) -> Method:
        both = labelled.index.intersection(x.predictions.index).intersection(y.predictions.index)
        truth = labelled.loc[both].to_numpy()

        def score(m):
            return metrics.balanced_accuracy(truth, list(m.predictions.loc[both]))

        return x if len(both) == 0 or score(x) >= score(y) else y

    return better


def paired_tables(asked: dict[str, list], groups, n_boot, seed) -> pd.DataFrame:
    """Both families' rows, each family Holm-corrected within itself only, with enough sign
    patterns for its size (`stats.permutations_for`)."""
    frames = []
    for name, pairs in asked.items():
        n_permutations = max(stats.N_PERMUTATIONS, stats.permutations_for(len(pairs)))
        rows = _paired_rows(pairs, groups, n_boot, n_permutations, seed)
        if rows:
            frames.append(stats.with_family(pd.DataFrame(rows)).assign(family=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _paired_rows(pairs, groups, n_boot, n_permutations, seed) -> list[dict]:
    """Each pair on the labelled images both methods answered."""
    rows = []
    for question, a, b, labelled in pairs:
        both = a.predictions.index.intersection(b.predictions.index)
        truth = labelled.loc[labelled.index.intersection(both)]
        if len(truth) < 2:
            continue
        result = stats.paired_comparison(
            truth.to_numpy(),
            list(a.predictions.loc[truth.index]),
            list(b.predictions.loc[truth.index]),
            groups.loc[truth.index].to_numpy(),
            n_boot=n_boot,
            n_permutations=n_permutations,
            seed=seed,
        )
        rows.append(
            {
                "task": a.task,
                "question": question,
                "method_a": label(a.identity()),
                "method_b": label(b.identity()),
                **{f"a_{k}": v for k, v in a.identity().items()},
                **{f"b_{k}": v for k, v in b.identity().items()},
                **result,
            }
        )
    return rows
