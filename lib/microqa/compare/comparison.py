"""Compare every method on the same images, and combine CLIP with a VLM (cascade, fusion).

Cross-fitting: the images are split into two folds of whole specimens (`splits`). For each
fold, every choice (CLIP prompt set, cascade threshold, fusion weight) is made on the *other*
fold and applied to this one; the out-of-fold predictions of both folds are pooled, so every
labelled image is evaluated exactly once and no choice sees the image it is scored on.

A method's identity is data (`IDENTITY` columns: kind, base, model, weights, context, mode,
prompt_set, partner); its display label is derived from them by `label` and never parsed back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import pandas as pd

from microqa import provenance, stats
from microqa.clip import outputs as clip_outputs
from microqa.clip.outputs import MAIN_PROBE, SCORE_PROMPT_SETS
from microqa.compare import baselines, family
from microqa.compare.answers import hybrid_partners, vlm_decisions, vlm_methods
from microqa.compare.hybrids import (
    apply_cascade,
    cascade_curve,
    choose_fusion_weight,
    choose_prompt_set,
    choose_threshold,
    cross_fit,
    fuse,
    hybrid,
    reported_as,
)
from microqa.compare.methods import Method, clip_methods, label, part_weights
from microqa.data import splits, taxonomy, variants
from microqa.vlm import outputs as vlm_outputs


@dataclass
class StudyComparison:
    table: pd.DataFrame  # every method, pooled out-of-fold predictions, per task and subset
    curves: pd.DataFrame  # cascade curves of the cross-fitted CLIP stage
    # every pair as a paired test: `family` says "primary" (the named comparisons of
    # `compare.family`, Holm within them) or "exploratory" (Holm among those only)
    paired: pd.DataFrame
    choices: pd.DataFrame  # what was chosen on which fold
    # per image, every method's answer: task, micrograph_no, truth, method (label), the
    # identity columns, prediction (None: no answer); the galleries of disagreements read it
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per image and cascade: task, method, micrograph_no, truth, clip_prediction,
    # clip_confidence (margin), vlm_prediction, sent (handed to the VLM)
    handoffs: pd.DataFrame = field(default_factory=pd.DataFrame)
    # every method of the table on all its labelled images (pooled out of fold, probabilities
    # included), and the specimen folds the choices were made on: what calibration, selective
    # prediction and the per-class results read
    methods: list[Method] = field(default_factory=list)
    folds: pd.Series = field(default_factory=pd.Series)

    @property
    def paired_primary(self) -> pd.DataFrame:
        return _family_rows(self.paired, "primary")

    @property
    def paired_exploratory(self) -> pd.DataFrame:
        return _family_rows(self.paired, "exploratory")


def _family_rows(paired: pd.DataFrame, name: str) -> pd.DataFrame:
    if paired.empty:
        return paired
    return paired[paired["family"] == name].reset_index(drop=True)


def default_paths() -> dict[str, Path]:
    clip_files = clip_outputs.paths()
    return {
        **{kind: clip_files[kind] for kind in ("zero_shot", "probe", "timing")},
        "answers": vlm_outputs.answers_path(),
    }


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def compare(
    df: pd.DataFrame,
    *,
    n_boot: int,
    paths: dict[str, Path] | None = None,
    seed: int = 0,
    data_source: str = "unknown",
) -> StudyComparison:
    """Cross-fitted comparison of every method on every labelled image each task has;
    `data_source` (the run's dataset source: "sample", "scraped", ...) names the data in each
    row's provenance."""
    paths = paths or default_paths()
    timing = json.loads(paths["timing"].read_text()) if paths["timing"].exists() else {}
    records = df.set_index("micrograph_no")
    folds = pd.Series(splits.folds_of(df).to_numpy(), index=records.index)
    methods = (
        clip_methods(_read_csv(paths["zero_shot"]), timing, kind="clip_zero_shot")
        + clip_methods(_read_csv(paths["probe"]), timing, kind="clip_probe")
        + vlm_methods(vlm_decisions(paths["answers"], folds))
    )
    slag = pd.Series(taxonomy.slag_records(df), index=records.index)
    tables, curves, choices, answers, handoffs = [], [], [], [], []
    evaluated: list[Method] = []
    asked: dict[str, list] = {"primary": [], "exploratory": []}
    for task, (column, classes) in taxonomy.TASKS.items():
        labelled = records.loc[records[column].isin(classes), column]
        task_methods = [_covering(m, labelled) for m in methods if m.task == task]
        task_methods = [m for m in task_methods if _two_folds(m.predictions.index, folds)]
        if not task_methods:
            continue  # nothing to compare, or one fold only: nothing to cross-fit on
        stages = _clip_stages(task_methods, labelled, folds, choices)
        pooled = [clip for _, clip in stages]
        vlms = [m for m in task_methods if m.kind == "vlm"]
        hybrids = []
        for stage, clip in stages:
            for vlm in hybrid_partners(vlms):
                both = labelled.loc[clip.predictions.index.intersection(vlm.predictions.index)]
                if _two_folds(both.index, folds):
                    on_both = {k: m.restricted(both.index) for k, m in stage.items()}
                    pair = (clip.restricted(both.index), vlm.restricted(both.index))
                    made = _hybrids(on_both, *pair, both, folds, choices, curves)
                    handoffs += [_handoff_rows(h, pair[1], both) for h in made]
                    hybrids += made
        everything = pooled + vlms + hybrids
        evaluated += everything
        answers += [_answer_rows(m, labelled) for m in everything]
        subsets = {"all labelled": labelled}
        if task == "category":  # archaeological slags are a category question's own group
            subsets["without archaeological slags"] = labelled[~slag.loc[labelled.index]]
        for subset, keep in subsets.items():
            tables += [_row(m, keep, records, subset, n_boot, seed) for m in everything]
            groups = records["specimen_group"]
            tables += baselines.rows(keep, folds, groups, task, subset, n_boot, seed)
        primary = family.primary_pairs(everything, family.better_part(labelled))
        named = {(id(a), id(b)) for _, a, b in primary}
        asked["primary"] += [(q, a, b, labelled) for q, a, b in primary]
        asked["exploratory"] += [
            (q, a, b, labelled)
            for q, a, b in study_pairs(everything)
            if (id(a), id(b)) not in named
        ]
    table = pd.DataFrame(tables)
    if not table.empty:
        commit = provenance.git_sha()
        table["provenance"] = [provenance_line(w, data_source, commit) for w in table["weights"]]
    return StudyComparison(
        table=table,
        curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        paired=family.paired_tables(asked, records["specimen_group"], n_boot, seed),
        choices=pd.DataFrame(choices),
        predictions=pd.concat(answers, ignore_index=True) if answers else pd.DataFrame(),
        handoffs=pd.concat([h for h in handoffs if h is not None], ignore_index=True)
        if any(h is not None for h in handoffs)
        else pd.DataFrame(),
        methods=evaluated,
        folds=folds,
    )


def _answer_rows(method: Method, labelled: pd.Series) -> pd.DataFrame:
    """One row per labelled image the method answered."""
    ids = labelled.index.intersection(method.predictions.index)
    return pd.DataFrame(
        {
            "task": method.task,
            "micrograph_no": ids,
            "truth": labelled.loc[ids].to_numpy(),
            "method": label(method.identity()),
            **method.identity(),
            "prediction": method.predictions.loc[ids].astype(object).to_numpy(),
        }
    )


def _handoff_rows(method: Method, vlm: Method, truth: pd.Series) -> pd.DataFrame | None:
    """A cascade's per-image hand-off (None for a fusion, which hands nothing off)."""
    if method.kind != "cascade":
        return None
    notes, ids = method.notes, truth.index
    return pd.DataFrame(
        {
            "task": method.task,
            "method": label(method.identity()),
            "micrograph_no": ids,
            "truth": truth.to_numpy(),
            "clip_prediction": notes["base_prediction"].loc[ids].to_numpy(),
            "clip_confidence": notes["confidence"].loc[ids].to_numpy(),
            "vlm_prediction": vlm.predictions.loc[ids].astype(object).to_numpy(),
            "sent": notes["sent"].loc[ids].astype(bool).to_numpy(),
        }
    )


def gallery_predictions(predictions: pd.DataFrame, task: str = "technique") -> pd.DataFrame:
    """The few methods a disagreement gallery compares on one task: each CLIP zero-shot
    (cross-fitted prompt set), the logistic probe, and each VLM without CLIP context in the
    study's wording and the run's main mode (the one asked of every image; the context and
    hybrid variants are combinations of these)."""
    if predictions.empty:
        return predictions
    rows = predictions[predictions["task"] == task]
    vlm = (rows["kind"] == "vlm") & (rows["context"] == "none") & (rows["prompt_set"] == "study")
    if "variant" in rows:  # the micrograph itself, not the no-image baseline
        vlm &= rows["variant"] != variants.BLANK
    if vlm.any():
        vlm &= rows["mode"] == rows.loc[vlm, "mode"].value_counts().index[0]
    keep = (
        (rows["kind"] == "clip_zero_shot")
        | ((rows["kind"] == "clip_probe") & (rows["prompt_set"] == MAIN_PROBE))
        | vlm
    )
    return rows[keep]


def _covering(method: Method, labelled: pd.Series) -> Method:
    """The method on the labelled images it answered (each method covers its own images)."""
    return method.restricted(method.predictions.index.intersection(labelled.index))


def _two_folds(ids, folds: pd.Series) -> bool:
    """Cross-fitting needs images in both folds."""
    return folds.loc[ids].nunique() >= 2


def _clip_stages(methods, labelled, folds, choices) -> list[tuple[dict[str, Method], Method]]:
    """CLIP stages as (candidates by prompt set, their pooled cross-fitted method): zero-shot
    chooses its prompt set on the other fold; a probe is already out of fold."""
    stages: list[dict[str, Method]] = []
    zero_shot = [m for m in methods if m.kind == "clip_zero_shot"]
    for model in sorted({m.model for m in zero_shot}):
        sets = [m for m in zero_shot if m.model == model]
        common = labelled.index
        for m in sets:
            common = common.intersection(m.predictions.index)
        stages.append({m.prompt_set: m.restricted(common) for m in sets})
    stages += [{m.prompt_set: m} for m in methods if m.kind == "clip_probe"]
    pooled = []
    for candidates in stages:
        first = next(iter(candidates.values()))
        if first.kind == "clip_probe":
            pooled.append((candidates, first))
            continue
        template = replace(first, prompt_set="cross-fitted")

        def fit(train, candidates=candidates):
            chosen = choose_prompt_set(candidates, train)
            return {"prompt_set": chosen}, candidates[chosen]

        truth = labelled.loc[first.predictions.index]
        method, rows = cross_fit(truth, folds, fit, template)
        choices += [{"task": first.task, **template.identity(), **r} for r in rows]
        pooled.append((candidates, method))
    return pooled


def _hybrids(candidates, clip, vlm, truth, folds, choices, curves) -> list[Method]:
    """Cascade (and fusion, when the VLM has probabilities) of one CLIP stage with one VLM,
    every choice (prompt set included) made on the other fold."""

    def stage(train) -> tuple[dict, Method]:
        chosen = choose_prompt_set(candidates, train)
        return {"prompt_set": chosen} if len(candidates) > 1 else {}, candidates[chosen]

    def fit_cascade(train):
        choice, base = stage(train)
        threshold = choose_threshold(cascade_curve(base, vlm, train))
        return {**choice, "threshold": threshold}, apply_cascade(base, vlm, threshold)

    def fit_fusion(train):
        choice, base = stage(train)
        weight = choose_fusion_weight(base, vlm, train)
        return {**choice, "weight": weight}, fuse(base, vlm, weight)

    fits = {"cascade": fit_cascade}
    if vlm.probabilities is not None:
        fits["fusion"] = fit_fusion
    out = []
    for kind, fit in fits.items():
        template = hybrid(kind, clip, vlm, None, None, None)  # cross_fit fills the predictions
        method, rows = cross_fit(truth, folds, fit, template)
        fraction = method.notes["fraction_to_vlm"]  # a fusion asks the VLM of every image: 1
        method.seconds_per_image = (clip.seconds_per_image or 0.0) + fraction * (
            vlm.seconds_per_image or 0.0
        )
        method.visual_tokens = None if vlm.visual_tokens is None else fraction * vlm.visual_tokens
        as_part = reported_as(method, rows, clip, vlm)
        choices += [
            {"task": clip.task, **method.identity(), **r, "reported_as": as_part} for r in rows
        ]
        if not as_part:  # a hybrid that is one of its parts is that part's row, not its own
            out.append(method)
    curve = cascade_curve(clip, vlm, truth)
    curves.append(
        curve.assign(
            task=clip.task,
            base=label(clip.identity()),
            vlm=label(vlm.identity()),
            mode=vlm.mode,
        )
    )
    return out


def _row(method: Method, labelled: pd.Series, records, subset, n_boot, seed) -> dict:
    truth = labelled.loc[labelled.index.intersection(method.predictions.index)]
    classes = taxonomy.TASKS[method.task][1]
    probs = None if method.probabilities is None else method.probabilities.loc[truth.index]
    summary = stats.summarise(
        truth.to_numpy(),
        list(method.predictions.loc[truth.index].to_numpy()),
        records.loc[truth.index, "specimen_group"].to_numpy(),
        scores=None if probs is None else probs.to_numpy(),
        classes=classes,
        n_boot=n_boot,
        seed=seed,
    )
    return {
        "task": method.task,
        "subset": subset,
        **method.identity(),
        "label": label(method.identity()),
        **summary,
        "n_note": n_note(method, len(truth), len(labelled)),
        "seconds_per_image": method.seconds_per_image,
        "visual_tokens_per_image": method.visual_tokens,
        # hybrids: the share of images sent to the VLM (a fusion asks it of every image) and
        # the weights of each part
        "fraction_to_vlm": method.notes.get("fraction_to_vlm")
        if method.kind in ("cascade", "fusion")
        else None,
        "part_weights": part_weights(method),
    }


COVERAGE = {  # why a method answers fewer images than the subset has
    "clip_probe": "the images with reference CLIP features",
    "clip_zero_shot": "the images the CLIP run embedded",
    "vlm": "the images the VLM was asked",
    "cascade": "the images both parts answered",
    "fusion": "the images both parts answered",
}


def n_note(method: Method, n: int, labelled: int) -> str:
    """Which images a row's n counts, when not every labelled image of its subset."""
    if method.kind == "vlm" and method.mode == "generate":
        return f"generate-mode agreement subset, n = {n} of {labelled}"
    if method.variant == variants.BLANK:
        return f"{n} of {labelled} labelled images: the robustness sample, shown a blank image"
    if n == labelled:
        return "every labelled image"
    return f"{n} of {labelled} labelled images: {COVERAGE.get(method.kind, 'those answered')}"


def study_pairs(methods: list[Method]) -> list[tuple[str, Method, Method]]:
    """The study's questions, as (question, a, b): the difference is a minus b. The blank-image
    baseline takes part in the primary family's visual gain only (`family.primary_pairs`)."""
    vlms = [m for m in methods if m.kind == "vlm" and not family.shows_blank(m)]
    zero_shot = [m for m in methods if m.kind == "clip_zero_shot"]
    probes = [m for m in methods if m.kind == "clip_probe"]
    clips = zero_shot + probes
    pairs = []
    for v in vlms:
        for plain in vlms:
            same = (plain.model, plain.mode, plain.prompt_set) == (v.model, v.mode, v.prompt_set)
            if same and plain.context == "none" and v.context != "none":
                pairs.append(("VLM with CLIP context vs without", v, plain))
    for i, a in enumerate(vlms):
        for b in vlms[i + 1 :]:
            if a.model != b.model and (a.context, a.mode, a.prompt_set) == (
                b.context,
                b.mode,
                b.prompt_set,
            ):
                pairs.append(("one VLM vs another", a, b))
    pairs += [("CLIP zero-shot vs CLIP probe", z, p) for z in zero_shot for p in probes]
    knn = [p for p in probes if p.prompt_set == SCORE_PROMPT_SETS["knn"]]
    for v in vlms:
        if v.context == "clip_neighbours":
            pairs += [("retrieved expert metadata (VLM) vs k-NN probe", v, k) for k in knn]
    for h in (m for m in methods if m.kind in ("cascade", "fusion")):
        # the VLM the hybrid was made with (`hybrid_partners`: the study's wording where the
        # task has it) and its CLIP stage: one each, by construction
        partner = [
            v
            for v in hybrid_partners(vlms)
            if (v.model, v.context, v.mode) == (h.partner, h.context, h.mode)
        ]
        stage = [c for c in clips if (c.kind, c.model) == (h.base, h.model)]
        stage = [c for c in stage if c.prompt_set == h.prompt_set]
        pairs += [(f"{h.kind} vs its VLM alone", h, v) for v in partner]
        pairs += [(f"{h.kind} vs its CLIP stage", h, c) for c in stage]
    return pairs


def published_rows() -> pd.DataFrame:
    """The earlier study's published numbers (github.com/Subham2507/mic_hackathon), as printed."""
    with resources.files("microqa").joinpath("published_earlier_study.csv").open() as fh:
        table = pd.read_csv(fh)
    table["kind"] = "published"
    table["weights"] = "pretrained (published)"
    return table


def provenance_line(weights: str, source: str, commit: str | None = None) -> str:
    """A row's provenance; `commit`: the checkout's (`provenance.git_sha`, asked once per
    table: each asking runs `git status`, seconds when a notebook is edited)."""
    data_label = "embedded sample" if source == "sample" else f"DoITPoMS ({source})"
    return f"data: {data_label}; weights: {weights}; git {commit or provenance.git_sha()}"
