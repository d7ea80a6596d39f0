"""Compare every method on the same images, and combine CLIP with a VLM (cascade, fusion).

Inputs are the files the CLIP and VLM stages write under build/ (see their modules). Every
choice (cascade threshold, fusion weight; the CLIP prompt set upstream) is made on the
"select" half of `dataset.selection_split` and reported on the "evaluate" half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import config, metrics, provenance, taxonomy
from microqa.clip import outputs as clip_outputs
from microqa.vlm import runner

HYBRID_NOTES = ("threshold", "fraction_to_vlm", "weight")
FUSION_WEIGHTS = tuple(np.round(np.linspace(0, 1, 11), 2))


@dataclass
class Method:
    """One method's answers to one task: predictions (class or None) and, where it has them,
    probabilities over the task's classes (rows: micrograph_no)."""

    name: str
    kind: str  # clip_zero_shot | clip_probe | vlm | cascade | fusion
    task: str
    label: str  # short and the same across tasks (the README's row name)
    predictions: pd.Series
    probabilities: pd.DataFrame | None = None
    weights: str = "n/a"  # pretrained | random
    seconds_per_image: float | None = None
    visual_tokens: float | None = None
    notes: dict = field(default_factory=dict)

    def restricted(self, ids) -> Method:
        probs = None if self.probabilities is None else self.probabilities.loc[ids]
        return replace(self, predictions=self.predictions.loc[ids], probabilities=probs)


def _pivot(long: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    table = long.pivot_table(index="micrograph_no", columns="class", values="probability")
    return table.reindex(columns=list(classes)).fillna(0.0)


def _argmax(probs: pd.DataFrame) -> pd.Series:
    return pd.Series(probs.columns[np.argmax(probs.to_numpy(), axis=1)], index=probs.index)


def clip_methods(
    scores: pd.DataFrame, best: pd.DataFrame, timing: dict, *, kind: str = "clip_zero_shot"
) -> list[Method]:
    """CLIP zero-shot methods with the prompt set chosen upstream on the select half."""
    out: list[Method] = []
    if scores.empty:
        return out
    chosen = {(r.model, r.task): r.prompt_set for r in best.itertuples()} if len(best) else {}
    for (model, task), group in scores.groupby(["model", "task"], sort=True):
        if task not in taxonomy.TASKS:
            continue
        prompt_set = chosen.get((model, task), group["prompt_set"].iloc[0])
        group = group[group["prompt_set"] == prompt_set]
        probs = _pivot(group, taxonomy.TASKS[task][1])
        label = "probe" if kind == "clip_probe" else f"zero-shot, {prompt_set}"
        out.append(
            Method(
                name=f"CLIP {model.removeprefix('probe:')} ({label})",
                kind=kind,
                task=task,
                label=f"CLIP probe on {model.removeprefix('probe:')}"
                if kind == "clip_probe"
                else f"CLIP {model} zero-shot",
                predictions=_argmax(probs),
                probabilities=probs,
                weights=str(group["weights"].iloc[0]),
                seconds_per_image=_embedding_cost(model, timing),
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


def vlm_methods(answers: pd.DataFrame) -> list[Method]:
    """One method per VLM x context x mode x prompt set (the identity option order only)."""
    out = []
    if answers.empty:
        return out
    answers = answers.copy()
    answered = answers["prediction"].notna() & (answers["prediction"].astype(str) != "")
    answers["prediction"] = answers["prediction"].where(answered, None)
    keys = ["model", "task", "context", "mode", "prompt_set"]
    for (model, task, context, mode, prompt_set), group in answers.groupby(keys, sort=True):
        if task not in taxonomy.TASKS:
            continue
        group = group.drop_duplicates("micrograph_no").set_index("micrograph_no")
        classes = taxonomy.TASKS[task][1]
        probs = None
        if mode == "score" and group["probabilities"].astype(str).str.len().gt(2).all():
            parsed = [json.loads(p) for p in group["probabilities"]]
            probs = pd.DataFrame(parsed, index=group.index).reindex(columns=list(classes)).fillna(0)
        pred = group["prediction"].where(group["prediction"].notna(), None)
        out.append(
            Method(
                name=f"{Path(str(model)).name} ({context} context, {mode}, {prompt_set})",
                kind="vlm",
                task=task,
                label=f"{Path(str(model)).name}, {context} context"
                + (", earlier study's prompt" if prompt_set == "earlier_study" else ""),
                predictions=pred,
                probabilities=probs,
                weights=str(group["weights"].iloc[0]),
                seconds_per_image=float(group["latency_s"].mean()),
                visual_tokens=float(group["visual_tokens"].mean())
                if group["visual_tokens"].notna().any()
                else None,
                notes={"model": model, "context": context, "mode": mode, "prompt_set": prompt_set},
            )
        )
    return out


def confidence(probs: pd.DataFrame, how: str = "margin") -> pd.Series:
    """Top probability, or margin between the two highest (default: margin)."""
    values = np.sort(probs.to_numpy(), axis=1)
    score = values[:, -1] - values[:, -2] if how == "margin" else values[:, -1]
    return pd.Series(score, index=probs.index)


def _score(truth: pd.Series, pred: pd.Series, metric: str) -> float:
    fn = metrics.balanced_accuracy if metric == "balanced_accuracy" else metrics.accuracy
    return fn(truth.to_numpy(), list(pred.to_numpy()))


def _hybrid_partners(vlms: list[Method]) -> list[Method]:
    """The VLM answers a hybrid uses: asked without CLIP context (the context variants already
    combine the two inside the prompt), in the study's wording where the task has it."""
    plain = [v for v in vlms if v.notes.get("context") == "none"]
    study = [v for v in plain if v.notes.get("prompt_set") == "study"]
    return study or plain


def cascade_curve(base: Method, vlm: Method, truth: pd.Series, how: str = "margin") -> pd.DataFrame:
    """Accuracy and balanced accuracy as the least confident images are sent to the VLM."""
    ids = truth.index
    conf = confidence(base.probabilities.loc[ids], how)
    rows = []
    for threshold in [-np.inf, *np.unique(conf.to_numpy()), np.inf]:
        send = conf < threshold if np.isfinite(threshold) else conf <= threshold
        pred = base.predictions.loc[ids].where(~send, vlm.predictions.loc[ids])
        pred = pred.astype(object).where(pred.notna(), None)
        rows.append(
            {
                "threshold": threshold,
                "fraction_to_vlm": float(send.mean()),
                "accuracy": _score(truth, pred, "accuracy"),
                "balanced_accuracy": _score(truth, pred, "balanced_accuracy"),
            }
        )
    return pd.DataFrame(rows).drop_duplicates("fraction_to_vlm", keep="first")


def choose_threshold(curve: pd.DataFrame, metric: str = "balanced_accuracy") -> float:
    """Best threshold on the selection curve; ties go to the cheaper (fewer images sent)."""
    best = curve.sort_values([metric, "fraction_to_vlm"], ascending=[False, True]).iloc[0]
    return float(best["threshold"])


def apply_cascade(base: Method, vlm: Method, threshold: float, how: str = "margin") -> Method:
    ids = base.predictions.index.intersection(vlm.predictions.index)
    conf = confidence(base.probabilities.loc[ids], how)
    send = conf < threshold if np.isfinite(threshold) else conf <= threshold
    pred = base.predictions.loc[ids].where(~send, vlm.predictions.loc[ids])
    fraction = float(send.mean())
    cost = (base.seconds_per_image or 0.0) + fraction * (vlm.seconds_per_image or 0.0)
    return Method(
        name=f"cascade: {base.name} -> {vlm.name}",
        kind="cascade",
        task=base.task,
        label=f"cascade {base.label} -> {vlm.label.split(',')[0]}",
        predictions=pred.astype(object).where(pred.notna(), None),
        weights=_combined_weights(base, vlm),
        seconds_per_image=cost,
        visual_tokens=None if vlm.visual_tokens is None else fraction * vlm.visual_tokens,
        notes={"threshold": threshold, "fraction_to_vlm": fraction, "confidence": how},
    )


def fuse(clip: Method, vlm: Method, weight: float) -> Method:
    """Weighted product of option probabilities: p ∝ p_clip^w · p_vlm^(1-w)."""
    ids = clip.probabilities.index.intersection(vlm.probabilities.index)
    eps = 1e-6
    log_p = weight * np.log(clip.probabilities.loc[ids] + eps) + (1 - weight) * np.log(
        vlm.probabilities.loc[ids] + eps
    )
    probs = np.exp(log_p.sub(log_p.max(axis=1), axis=0))
    probs = probs.div(probs.sum(axis=1), axis=0)
    return Method(
        name=f"fusion (w_clip={weight:.1f}): {clip.name} x {vlm.name}",
        kind="fusion",
        task=clip.task,
        label=f"fusion {clip.label} x {vlm.label.split(',')[0]}",
        predictions=_argmax(probs),
        probabilities=probs,
        weights=_combined_weights(clip, vlm),
        seconds_per_image=(clip.seconds_per_image or 0.0) + (vlm.seconds_per_image or 0.0),
        visual_tokens=vlm.visual_tokens,
        notes={"weight": weight},
    )


def choose_fusion_weight(clip: Method, vlm: Method, truth: pd.Series) -> float:
    scores = []
    for w in FUSION_WEIGHTS:
        fused = fuse(clip.restricted(truth.index), vlm.restricted(truth.index), w)
        scores.append((_score(truth, fused.predictions, "balanced_accuracy"), -abs(w - 0.5), w))
    return float(max(scores)[2])


def _combined_weights(a: Method, b: Method) -> str:
    return "random" if "random" in (a.weights, b.weights) else a.weights


def summarise_method(method: Method, truth: pd.Series, *, n_boot: int, seed: int) -> dict:
    ids = truth.index
    classes = taxonomy.TASKS[method.task][1]
    probs = None if method.probabilities is None else method.probabilities.loc[ids]
    row = metrics.summarise(
        truth.to_numpy(),
        list(method.predictions.loc[ids].to_numpy()),
        scores=None if probs is None else probs.to_numpy(),
        classes=classes if probs is not None else None,
        n_boot=n_boot,
        seed=seed,
    )
    return {
        "task": method.task,
        "method": method.name,
        "label": method.label,
        "kind": method.kind,
        **row,
        "weights": method.weights,
        "seconds_per_image": method.seconds_per_image,
        "visual_tokens_per_image": method.visual_tokens,
        **{k: v for k, v in method.notes.items() if k in HYBRID_NOTES},
    }


def published_rows() -> pd.DataFrame:
    """The earlier study's published numbers (github.com/Subham2507/mic_hackathon), as printed."""
    with resources.files("microqa").joinpath("published_earlier_study.csv").open() as fh:
        table = pd.read_csv(fh)
    table["kind"] = "published"
    table["weights"] = "pretrained (published)"
    return table


def provenance_line(weights: str) -> str:
    data = provenance.load().get("data", {})
    source = data.get("source", "unknown")
    data_label = "embedded sample" if source == "sample" else f"DoITPoMS ({source})"
    return f"data: {data_label}; weights: {weights}; git {provenance.git_sha()}"


def paired_tests(
    methods: list[Method], truth: pd.Series, pairs: list[tuple[str, str]]
) -> pd.DataFrame:
    """McNemar and paired-bootstrap accuracy difference for named pairs on the same images."""
    by_name = {m.name: m for m in methods}
    rows = []
    for a, b in pairs:
        if a not in by_name or b not in by_name:
            continue
        ca = by_name[a].predictions.loc[truth.index].to_numpy() == truth.to_numpy()
        cb = by_name[b].predictions.loc[truth.index].to_numpy() == truth.to_numpy()
        rows.append(
            {
                "task": by_name[a].task,
                "method_a": a,
                "method_b": b,
                **metrics.mcnemar(ca, cb),
                **{
                    f"acc_diff_{k}": v
                    for k, v in metrics.paired_bootstrap_difference(ca, cb).items()
                },
            }
        )
    return pd.DataFrame(rows)


def default_paths() -> dict[str, Path]:
    clip_files = clip_outputs.paths()
    return {
        **{kind: clip_files[kind] for kind in ("zero_shot", "probe", "best", "timing")},
        "answers": config.build_dir() / "vlm" / "answers.csv",
    }


@dataclass
class StudyComparison:
    table: pd.DataFrame  # every method on the same evaluation images, per task
    curves: pd.DataFrame  # cascade curves on the evaluation images
    paired: pd.DataFrame  # paired tests on the same images
    choices: pd.DataFrame  # thresholds / weights chosen on the selection half


def compare(
    df: pd.DataFrame,
    split: pd.Series,
    *,
    paths: dict[str, Path] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> StudyComparison:
    """Build the comparison for every task that has CLIP scores (and VLM answers, if any)."""
    paths = paths or default_paths()
    zero_shot = _read_csv(paths["zero_shot"])
    probe = _read_csv(paths["probe"])
    best = _read_csv(paths["best"])
    answers = runner.load_answers(paths["answers"]) if paths["answers"].exists() else pd.DataFrame()
    timing = json.loads(paths["timing"].read_text()) if paths["timing"].exists() else {}
    all_methods = (
        clip_methods(zero_shot, best, timing)
        + clip_methods(probe, pd.DataFrame(), timing, kind="clip_probe")
        + vlm_methods(answers)
    )
    labels = df.set_index("micrograph_no")
    halves = pd.Series(split.to_numpy(), index=df["micrograph_no"].to_numpy())
    tables, curves, paired, choices = [], [], [], []
    for task, (column, classes) in taxonomy.TASKS.items():
        methods = [m for m in all_methods if m.task == task]
        if not methods:
            continue
        truth = labels.loc[labels[column].isin(classes), column]  # e.g. no "Other" technique
        ids = truth.index
        for m in methods:
            ids = ids.intersection(m.predictions.index)
        truth = truth.loc[ids]
        select = truth[halves.loc[ids] == "select"]
        evaluate = truth[halves.loc[ids] == "evaluate"]
        if len(select) == 0 or len(evaluate) == 0:
            continue
        methods = [m.restricted(ids) for m in methods]
        clips = [m for m in methods if m.kind in ("clip_zero_shot", "clip_probe")]
        vlms = [m for m in methods if m.kind == "vlm"]
        hybrids = []
        for base in clips:
            for vlm in _hybrid_partners(vlms):
                curve_select = cascade_curve(base, vlm, select)
                threshold = choose_threshold(curve_select)
                hybrids.append(apply_cascade(base, vlm, threshold))
                curve = cascade_curve(base, vlm, evaluate).assign(
                    task=task, base=base.label, vlm=vlm.label.split(",")[0]
                )
                curves.append(curve)
                choices.append(
                    {
                        "task": task,
                        "hybrid": "cascade",
                        "base": base.name,
                        "vlm": vlm.name,
                        "chosen": threshold,
                        "n_select": len(select),
                    }
                )
                if vlm.probabilities is not None:
                    w = choose_fusion_weight(base, vlm, select)
                    hybrids.append(fuse(base, vlm, w))
                    choices.append(
                        {
                            "task": task,
                            "hybrid": "fusion",
                            "base": base.name,
                            "vlm": vlm.name,
                            "chosen": w,
                            "n_select": len(select),
                        }
                    )
        for m in methods + hybrids:
            tables.append(summarise_method(m, evaluate, n_boot=n_boot, seed=seed))
        pairs = [(c.name, v.name) for c in clips for v in vlms]
        pairs += [
            (h.name, h.name.split(": ", 1)[1].split(" -> ")[0])
            for h in hybrids
            if h.kind == "cascade"
        ]
        paired.append(paired_tests(methods + hybrids, evaluate, pairs))
    table = pd.DataFrame(tables)
    if not table.empty:
        table["provenance"] = table["weights"].map(provenance_line)
    return StudyComparison(
        table=table,
        curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        paired=pd.concat(paired, ignore_index=True) if paired else pd.DataFrame(),
        choices=pd.DataFrame(choices),
    )


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True) if path.exists() else pd.DataFrame()


def plot_cascade(curves: pd.DataFrame, title: str):
    """Accuracy and balanced accuracy against the fraction of images sent to the VLM."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(
        2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False, sharex=True, sharey="row"
    )
    for col, task in enumerate(tasks):
        for (base, vlm), curve in curves[curves["task"] == task].groupby(["base", "vlm"]):
            label = f"{base} -> {vlm}"
            for row, metric in enumerate(("accuracy", "balanced_accuracy")):
                axes[row, col].plot(curve["fraction_to_vlm"], curve[metric], label=label)
        axes[0, col].set_title(task)
        axes[1, col].set_xlabel("fraction of images sent to the VLM (cost)")
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("balanced accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=2, frameon=False)
    return fig
