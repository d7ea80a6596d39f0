"""Tables of the VLM stage (notebook 04) from `build/vlm/answers.csv`.

Metrics are computed on the decisions of `scoring.decisions` (one per model x task x prompt
set x context x mode x image: every option order averaged, cross-fitted abstention) with
`microqa.stats.summarise`. The headline is the forced choice (no abstention); the selective
result of abstaining (coverage, balanced accuracy on answered images, effective reliability)
stands beside it. `unparseable_rate` is the share of
generated answers the strict parser could not read (generate mode; NaN in score mode). The
position-bias table is over every question asked; `rotation_effect_table` and
`agreement_table` say what rotation changed and whether score and generate mode agree. The
stage's figures are drawn in `vlm.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import metrics, stats
from microqa.data import taxonomy
from microqa.vlm import scoring
from microqa.vlm.outputs import probability_matrix

RANDOM_LABEL = "random weights"  # the substitute label of a random-weight model
GROUP = ["model", "weights", "task", "prompt_set", "context", "mode"]
BIAS_GROUP = ["model", "backend", "weights", "task", "prompt_set", "mode"]


def _rows_of(frame: pd.DataFrame, columns: list[str], keys: tuple) -> pd.DataFrame:
    """The rows of `frame` whose `columns` equal `keys`."""
    return frame[(frame[columns] == pd.Series(keys, index=columns)).all(axis=1)]


def specimens_of(records: pd.DataFrame, micrograph_no: Sequence) -> np.ndarray:
    """The specimen (`specimen_group`) of each image: the cluster its intervals resample."""
    by_id = records.set_index(records["micrograph_no"].astype(int))["specimen_group"]
    ids = pd.Index(micrograph_no).astype(int)
    missing = ids.difference(by_id.index)
    if len(missing):
        raise ValueError(f"{len(missing)} images have no record (e.g. micrograph {missing[0]})")
    return by_id.loc[ids].to_numpy()


def selective_summary(
    truth: Sequence,
    prediction: Sequence,
    groups: Sequence,
    *,
    scores: np.ndarray | None = None,
    classes: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """What abstaining gives, beside the forced choice: coverage (share answered), balanced
    accuracy and Top-2 on the answered images (with their interval), and the class-balanced
    effective reliability (+1 right, -1 wrong, 0 no answer) with its interval. Intervals
    resample `groups` (specimens) within class strata, as `stats.summarise` does."""
    truth = np.asarray(truth, dtype=object)
    prediction = np.asarray(prediction, dtype=object)
    answered = np.array([p is not None and p == p for p in prediction], dtype=bool)
    on_answered = stats.summarise(
        truth[answered],
        list(prediction[answered]),
        np.asarray(groups)[answered],
        scores=None if scores is None else scores[answered],
        classes=classes,
        n_boot=n_boot,
        seed=seed,
    )
    samples = stats.resamples(truth, groups, n_boot=n_boot, seed=seed)
    low, high = stats.interval(
        [scoring.effective_reliability(truth[i], prediction[i]) for i in samples]
    )
    return {
        "coverage": float(answered.mean()) if len(answered) else np.nan,
        "n_answered": int(answered.sum()),
        "balanced_accuracy_answered": on_answered["balanced_accuracy"],
        "balanced_accuracy_answered_ci_low": on_answered["balanced_accuracy_ci_low"],
        "balanced_accuracy_answered_ci_high": on_answered["balanced_accuracy_ci_high"],
        "accuracy_answered": on_answered["accuracy"],
        "top2_accuracy_answered": on_answered.get("top2_accuracy", np.nan),
        "effective_reliability": scoring.effective_reliability(truth, prediction)
        if len(truth)
        else np.nan,
        "effective_reliability_ci_low": low,
        "effective_reliability_ci_high": high,
    }


def qa_table(
    answers: pd.DataFrame,
    *,
    records: pd.DataFrame,
    decided: pd.DataFrame | None = None,
    fold: pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics of the decisions (`scoring.decisions`: rotation-averaged, cross-fitted
    abstention) per model x task x prompt set x context x mode.

    The headline columns (accuracy, balanced_accuracy, top2_accuracy, macro F1, their CIs) are
    the FORCED CHOICE: every image answered with its most probable option, no abstention, so
    abstaining can never lower the headline. Top-1 and Top-2 follow the same rule. Beside it,
    the selective result of abstaining below the cross-fitted letter-mass threshold
    (`selective_summary`: coverage, balanced accuracy on the answered images, effective
    reliability). Generate mode has no probabilities to force: an answer that was unreadable or
    inconsistent over the rotations stays unanswered (counted wrong) in both. Intervals
    resample the specimens of `records` (required: micrograph_no, specimen_group). Also the
    letter mass, the abstained rate and the cost per question."""
    if decided is None:
        decided = scoring.decisions(answers, fold=fold, records=records)
    asked = scoring.with_contract_columns(answers)
    rows = []
    for keys, group in decided.groupby(GROUP, sort=False):
        task = keys[GROUP.index("task")]
        classes = taxonomy.TASKS[task][1]
        scores = probability_matrix(group, classes)
        groups = specimens_of(records, group["micrograph_no"])
        common = {
            "scores": scores,
            "classes": classes if scores is not None else None,
            "n_boot": n_boot,
            "seed": seed,
        }
        truth = group["truth"].tolist()
        forced = stats.summarise(truth, group["choice"].tolist(), groups, **common)
        selective = selective_summary(group["truth"], group["prediction"], groups, **common)
        questions = _rows_of(asked, GROUP, keys)
        generated = keys[GROUP.index("mode")] == "generate"
        thresholds = group.groupby("fold")["threshold"].first()
        rows.append(
            {
                **dict(zip(GROUP, keys, strict=True)),
                "answer_rule": "forced choice (no abstention)",
                **forced,
                **selective,
                "rotations": int(group["n_rotations"].max()),
                "letter_mass_mean": float(group["letter_mass"].mean()),
                "abstained_rate": float(group["abstained"].mean()),
                "abstention_threshold": "; ".join(
                    f"{label}: {value:.3g}" for label, value in thresholds.items()
                )
                if not generated
                else "",
                # generate mode: share of ASKED questions the strict parser could not read
                "unparseable_rate": float(questions["prediction"].isna().mean())
                if generated
                else np.nan,
                "questions_asked": len(questions),
                "seconds_per_question": float(questions["latency_s"].mean()),
                "visual_tokens_mean": float(pd.to_numeric(questions["visual_tokens"]).mean()),
                "n_from_cache": int(questions["cached"].sum()),
            }
        )
    return pd.DataFrame(rows)


def position_bias_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per option letter: how often the model chose it vs how often it held the truth, over
    every question asked (contexts pooled), per model, task, prompt set and mode.

    With every rotation asked, each class sits under each letter equally often, so the truth
    is under each letter 1/k of the time; a `chosen_share` far from `truth_share` is position
    bias. In a fixed-order run the truth shares follow the class imbalance instead."""
    rows = []
    for keys, group in scoring.with_contract_columns(answers).groupby(BIAS_GROUP, sort=False):
        order = group["permutation"].str.split("|")
        truth_pos = [o.index(t) for o, t in zip(order, group["truth"], strict=True)]
        pred_pos = [
            o.index(p) if isinstance(p, str) and p in o else None
            for o, p in zip(order, group["prediction"], strict=True)
        ]
        for position in range(max(len(o) for o in order)):
            held = [t == position for t in truth_pos]
            hits = [p == position for p, h in zip(pred_pos, held, strict=True) if h]
            rows.append(
                {
                    **dict(zip(BIAS_GROUP, keys, strict=True)),
                    "position": chr(ord("A") + position),
                    "n_questions": len(group),
                    "rotations": group["rotation"].nunique(),
                    "chosen_share": float(np.mean([p == position for p in pred_pos])),
                    "truth_share": float(np.mean(held)),
                    "accuracy_when_truth_here": float(np.mean(hits)) if hits else np.nan,
                }
            )
    return pd.DataFrame(rows)


ROTATION_GROUP = ["model", "weights", "task", "prompt_set", "context", "mode"]


def rotation_effect_table(
    answers: pd.DataFrame, *, fold: pd.Series | None = None, records: pd.DataFrame | None = None
) -> pd.DataFrame:
    """How much asking every option order changed each model's numbers: balanced accuracy
    (and accuracy) of the fixed taxonomy order (rotation 0, what a single question gives) and
    of the rotation-averaged answer (the study's headline: forced choice, no abstention), on
    the same images; the rotation-averaged answer with abstention (unanswered counted wrong)
    stays beside them for reference."""
    variants = {
        "fixed_order": scoring.decisions(
            answers, fold=fold, records=records, fixed_order=True, abstain=False
        ),
        "rotated": scoring.decisions(answers, fold=fold, records=records, abstain=False),
        "rotated_abstaining": scoring.decisions(answers, fold=fold, records=records),
    }
    rows = []
    for keys, fixed in variants["fixed_order"].groupby(ROTATION_GROUP, sort=False):
        row = dict(zip(ROTATION_GROUP, keys, strict=True)) | {"n": len(fixed)}
        for name, decided in variants.items():
            part = _rows_of(decided, ROTATION_GROUP, keys)
            row[f"rotations_{name}"] = int(part["n_rotations"].max())
            row[f"balanced_accuracy_{name}"] = metrics.balanced_accuracy(
                part["truth"].tolist(), part["prediction"].tolist()
            )
            row[f"accuracy_{name}"] = metrics.accuracy(
                part["truth"].tolist(), part["prediction"].tolist()
            )
        row["balanced_accuracy_change"] = (
            row["balanced_accuracy_rotated"] - row["balanced_accuracy_fixed_order"]
        )
        rows.append(row)
    return pd.DataFrame(rows)


def rotation_readme_text(effect: pd.DataFrame) -> str:
    """The README's paragraph on what rotation changed, from `rotation_effect_table`."""
    part = effect[(effect["mode"] == "score") & (effect["rotations_rotated"] > 1)]
    if part.empty:
        return (
            "Options were asked in one fixed order only in this run, so the effect of asking "
            "every option order is not measured."
        )
    lines = [
        "Asking every cyclic order of the options changed balanced accuracy (forced choice) "
        "from the fixed taxonomy order as follows (score mode, same images):",
        "",
        "| model | task / prompt set | context | n | fixed order | every order | change |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in part.itertuples():
        lines.append(
            f"| {Path(str(r.model)).name} | {r.task} / {r.prompt_set} | {r.context} | {r.n} "
            f"| {r.balanced_accuracy_fixed_order:.3f} "
            f"| {r.balanced_accuracy_rotated:.3f} "
            f"| {r.balanced_accuracy_change:+.3f} |"
        )
    return "\n".join(lines)


AGREEMENT_KEYS = ["model", "backend", "weights", "task", "context", "prompt_set", "micrograph_no"]


def agreement_table(answers: pd.DataFrame, decided: pd.DataFrame) -> pd.DataFrame:
    """Score vs generate mode on the images both were run on: how often their decisions
    agree, how often each gave no answer, and generate mode's unparseable rate per question."""
    score = decided[decided["mode"] == "score"].set_index(AGREEMENT_KEYS)
    generate = decided[decided["mode"] == "generate"].set_index(AGREEMENT_KEYS)
    both = score.join(generate, how="inner", suffixes=("_score", "_generate"))
    asked = scoring.with_contract_columns(answers)
    asked = asked[asked["mode"] == "generate"].set_index(AGREEMENT_KEYS)
    rows = []
    group_keys = ["model", "weights", "task", "prompt_set", "context"]
    for keys, group in both.reset_index().groupby(group_keys, sort=False):
        s, g = group["prediction_score"], group["prediction_generate"]
        answered = s.notna() & g.notna()
        ids = pd.MultiIndex.from_frame(group[AGREEMENT_KEYS])
        parsed = asked.loc[asked.index.isin(ids), "prediction"]
        rows.append(
            {
                **dict(zip(group_keys, keys, strict=True)),
                "n_images": len(group),
                "agreement": float((s == g).mean()),  # no answer never agrees
                "agreement_when_both_answered": float((s[answered] == g[answered]).mean())
                if answered.any()
                else np.nan,
                "score_unanswered_rate": float(s.isna().mean()),
                "generate_unanswered_rate": float(g.isna().mean()),
                "generate_unparseable_rate": float(parsed.isna().mean()),
                "score_accuracy": metrics.accuracy(group["truth_score"].tolist(), s.tolist()),
                "generate_accuracy": metrics.accuracy(group["truth_score"].tolist(), g.tolist()),
            }
        )
    return pd.DataFrame(rows)


def description_table(
    descriptions: pd.DataFrame, *, records: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The open question, mapped back to the taxonomy: accuracy (unmapped counts as wrong),
    unmapped rate, and mean keyword recall against the record's expert keywords. Intervals
    resample the specimens of `records` (required: micrograph_no, specimen_group)."""
    rows = []
    for (model, weights), group in descriptions.groupby(["model", "weights"], sort=False):
        row = {"model": model, "weights": weights, "n": len(group)}
        tech = group[group["technique_truth"].notna() & (group["technique_truth"] != "")]
        summary = stats.summarise(
            tech["technique_truth"].tolist(),
            tech["technique_pred"].tolist(),
            specimens_of(records, tech["micrograph_no"]),
            n_boot=n_boot,
            seed=seed,
        )
        coarse_truth = tech["technique_truth"].map(taxonomy.coarse_class)
        coarse_pred = tech["technique_pred"].map(taxonomy.coarse_class)
        cat = group[group["category_truth"].notna() & (group["category_truth"] != "")]
        row.update(
            {
                "technique_accuracy": summary["accuracy"],
                "technique_accuracy_ci_low": summary["accuracy_ci_low"],
                "technique_accuracy_ci_high": summary["accuracy_ci_high"],
                "technique_unmapped_rate": float(tech["technique_pred"].isna().mean()),
                "technique_coarse_accuracy": metrics.accuracy(
                    coarse_truth.tolist(), coarse_pred.tolist()
                ),
                "category_n": len(cat),
                "category_accuracy": metrics.accuracy(
                    cat["category_truth"].tolist(), cat["category_pred"].tolist()
                ),
                "category_unmapped_rate": float(cat["category_pred"].isna().mean()),
                "keyword_recall_mean": float(group["keyword_recall"].mean()),
                "seconds_per_description": float(group["latency_s"].mean()),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def model_family(model: str) -> str | None:
    """The real processor family of a model id (for the visual-token cost table)."""
    from microqa.vlm import families

    family = families.family_of(model)
    return family.name if family else None


def visual_token_table(
    models: Sequence[str], image_paths: Sequence[str | Path], image_budget: int | None
) -> pd.DataFrame:
    """Visual tokens per image of each model's real processor: its default (what the earlier
    study used) vs this study's budget, over the real micrographs. Computed from the
    processors' own code, so it needs no weights and no GPU. The earlier study's Qwen2.5-VL
    default is listed beside Qwen3-VL for reference."""
    from microqa.vlm import visual_tokens  # transformers' image processors

    names = list(dict.fromkeys(f for f in map(model_family, models) if f))
    if "qwen3_vl" in names and "qwen2_5_vl" not in names:
        names.append("qwen2_5_vl")
    budgets = visual_tokens.default_budgets(names)  # the budgets a default run resolves
    if image_budget:
        budgets = {name: [None, image_budget] for name in names}
    table = visual_tokens.visual_token_table(list(image_paths), budgets)
    return table[table["family"].isin(names)].reset_index(drop=True)


def title_labels(weights: dict[str, str], substitutes: Sequence[str] = ()) -> list[str]:
    """Labels for titles and captions: the data substitutes passed in, plus 'random weights'
    when any model ran with random weights (the offline tiny stand-ins)."""
    labels = list(substitutes)
    if any(w != "pretrained" for w in weights.values()):
        labels.append(RANDOM_LABEL)
    return list(dict.fromkeys(labels))


def scored_decisions(
    decided: pd.DataFrame, model: str, task: str, *, context: str = "none"
) -> pd.DataFrame:
    """One model's score-mode decisions on one task, as `answer_galleries.confident_mistakes` reads
    them: micrograph_no, truth, prediction (None: abstained), confidence (the top class
    probability, averaged over the option rotations). The task's first prompt set in name
    order when several were asked. Empty in generate mode (no probabilities)."""
    rows = decided[
        (decided["model"] == model)
        & (decided["task"] == task)
        & (decided["context"] == context)
        & (decided["mode"] == "score")
    ]
    if rows.empty:
        return pd.DataFrame(columns=["micrograph_no", "truth", "prediction", "confidence"])
    rows = rows[rows["prompt_set"] == sorted(rows["prompt_set"].unique())[0]]
    top = probability_matrix(rows, list(taxonomy.TASKS[task][1]))
    return pd.DataFrame(
        {
            "micrograph_no": rows["micrograph_no"].to_numpy(),
            "truth": rows["truth"].to_numpy(),
            "prediction": rows["prediction"]
            .astype(object)
            .where(rows["prediction"].notna(), None)
            .to_numpy(),
            "confidence": np.nan if top is None else top.max(axis=1),
        }
    )


QA_VIEW = [
    "model",
    "weights",
    "task",
    "prompt_set",
    "context",
    "mode",
    "n",
    "rotations",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "balanced_accuracy",
    "macro_f1",
    "letter_mass_mean",
    "unanswered_rate",
    "abstention_threshold",
    "unparseable_rate",
    "seconds_per_question",
]


def qa_view(qa: pd.DataFrame) -> pd.DataFrame:
    """The QA table as notebook 04 shows it: the columns read first."""
    return qa[QA_VIEW]
