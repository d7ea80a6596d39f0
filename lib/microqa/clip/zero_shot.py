"""Zero-shot CLIP: prompt-set class embeddings, probabilities, the run over every model, the
and text -> image search.

The prompt-set choice itself (cross-fitted) lives in `prompt_choice`, free of torch."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from microqa.clip import embed, outputs, prompt_choice, prompts
from microqa.clip.models import (
    STAGE,
    ArchitectureUnavailable,
    ClipModel,
    ModelIdentity,
    default_device,
    load_identity,
    load_or_substitute,
)
from microqa.data import taxonomy, variants
from microqa.run import Run


def class_embeddings(encode, prompt_set: dict[str, list[str]]) -> np.ndarray:
    """One row per class: mean of the normalised prompt embeddings, renormalised.

    `encode(texts) -> (n, d)` normalised embeddings (e.g. a partial of `embed.encode_texts`).
    """
    rows = []
    for cls, texts in prompt_set.items():
        if not texts:
            raise ValueError(f"class {cls!r} has no prompts")
        emb = np.asarray(encode(texts), dtype=np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        mean = emb.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def zero_shot_probabilities(
    image_embeddings: np.ndarray, class_embeddings_: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Softmax over classes of logit_scale x cosine similarity; rows sum to 1."""
    logits = (
        logit_scale * np.asarray(image_embeddings, float) @ np.asarray(class_embeddings_, float).T
    )
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- the run


@dataclass
class ZeroShotRun:
    scores: pd.DataFrame  # outputs.SCORE_COLUMNS
    status: dict[str, str]  # model -> "pretrained" | "random" | "skipped:<reason>"
    timing: dict[str, dict]
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    models: dict[str, ModelIdentity] = field(default_factory=dict)  # model -> what was loaded
    failures: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=outputs.FAILURE_COLUMNS)
    )
    data_labels: list[str] = field(default_factory=list)  # e.g. ["sample data"]
    prompt_sets: dict | None = None  # None: microqa.clip.prompts' own

    @property
    def run_models(self) -> list[str]:
        return [m for m, s in self.status.items() if not s.startswith("skipped")]

    def weights(self, model: str) -> str:
        return self.status[model]

    def label(self, model: str) -> str:
        """The model's name and weights identity, as figures and tables show it."""
        return self.models[model].label if model in self.models else model


def run_zero_shot(
    df: pd.DataFrame,
    study: Run,
    *,
    device: str | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    variant: str = "original",
) -> ZeroShotRun:
    """Embed every image with every CLIP model of the study's profile, score every task x
    prompt set (the profile's, else microqa.clip.prompts'). One model in memory.

    Images that cannot be decoded are skipped (named once on stderr, kept in `failures`).
    `variant`: score that image variant (`data.variants`) instead of the original."""
    study.begin_stage(STAGE)
    options = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    return _zero_shot(df, study, (variant,), device=device, **options)[variant]


def _zero_shot(
    df: pd.DataFrame, study: Run, shown: tuple[str, ...], *, device: str | None, **options
) -> dict[str, ZeroShotRun]:
    """`run_zero_shot` under each image variant of `shown`, each model loaded once."""
    profile = study.profile
    device = device or default_device()
    runs = {}
    for variant in shown:
        runs[variant] = ZeroShotRun(pd.DataFrame(columns=outputs.SCORE_COLUMNS), {}, {})
        runs[variant].data_labels = study.data_labels
        runs[variant].prompt_sets = profile.clip_prompt_sets
    frames: dict[str, list] = {v: [] for v in shown}
    failures: dict[str, list] = {v: [] for v in shown}
    named: set[int] = set()
    for name in profile.clip_models:
        try:
            loaded = load_or_substitute(
                name,
                device=device,
                seed=study.seed,
                random_archs=profile.clip_random_archs,
                record=study.record,
            )
        except ArchitectureUnavailable as err:
            for run in runs.values():
                run.status[name] = f"skipped:{err}"
            print(f"SKIPPED: {err}", file=sys.stderr)
            continue
        for variant, run in runs.items():
            scored, failed = _embed_and_score(loaded, name, df, run, variant, named, **options)
            frames[variant].append(scored)
            failures[variant].append(failed)
        del loaded  # one model in memory at a time
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    for variant, run in runs.items():
        if frames[variant]:
            run.scores = pd.concat(frames[variant], ignore_index=True)
        if failures[variant]:
            failed = pd.concat(failures[variant])
            run.failures = failed.drop_duplicates("micrograph_no", ignore_index=True)
    return runs


def _embed_and_score(
    loaded: ClipModel,
    name: str,
    df: pd.DataFrame,
    run: ZeroShotRun,
    variant: str,
    named: set[int],
    **options,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model's embeddings of one variant of every image (kept in `run`), and its scores
    and failures (each failed image named once per call of `_zero_shot`)."""
    run.status[name], run.models[name] = loaded.weights, loaded.identity
    result = embed.embed_images(loaded, df["image_path"], variant=variant, **options)
    failed = outputs.failure_rows(df["image_path"], df["micrograph_no"], result.failures)
    outputs.announce_failures(failed, named)
    ok = result.ok
    run.embeddings[name] = (df["micrograph_no"].to_numpy()[ok], result.embeddings[ok])
    if result.n_computed:
        run.timing[name] = {
            "seconds_per_image": result.seconds / result.n_computed,
            "device": result.device,
            "n": result.n_computed,
        }
    elif (previous := embed.last_timing(loaded)) is not None:
        run.timing[name] = previous
    kept = df[ok].reset_index(drop=True)
    return _score_model(loaded, kept, result.embeddings[ok], run.prompt_sets), failed


def _score_model(
    loaded: ClipModel, df: pd.DataFrame, image_emb: np.ndarray, chosen: dict | None
) -> pd.DataFrame:
    table = embed.cached_text_embeddings(loaded, prompts.every_prompt(chosen))

    def encode(texts):
        return np.stack([table[t] for t in texts])

    frames = []
    for task, (column, classes) in taxonomy.TASKS.items():
        mask = df[column].isin(classes).to_numpy()
        if not mask.any():
            continue
        ids = df.loc[mask, "micrograph_no"].to_numpy()
        for set_name, prompt_set in prompts.prompt_sets(task, chosen).items():
            probs = zero_shot_probabilities(
                image_emb[mask], class_embeddings(encode, prompt_set), loaded.logit_scale
            )
            frames.append(
                pd.DataFrame(
                    {
                        "micrograph_no": np.repeat(ids, len(classes)),
                        "model": loaded.name,
                        "weights": loaded.weights,
                        "task": task,
                        "prompt_set": set_name,
                        "class": np.tile(classes, len(ids)),
                        "probability": probs.ravel(),
                    }
                )
            )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=outputs.SCORE_COLUMNS)
    )


def write_outputs(run: ZeroShotRun, best: pd.DataFrame) -> dict:
    """The stage's contract files for this run, failures.csv included."""
    written = outputs.write_zero_shot(run.scores, best, run.timing)
    written["failures"] = outputs.write_failures(run.failures)
    return written


# --------------------------------------------------------------------------- robustness


def run_robustness(
    df: pd.DataFrame,
    study: Run,
    best: pd.DataFrame,
    folds: pd.Series,
    *,
    device: str | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Zero-shot CLIP on each robustness variant (`variants.ROBUSTNESS_VARIANTS`) of the run's
    robustness sample (`variants.robustness_sample`, the images the VLMs' controls ask about),
    and on the originals of the same images: each image scored with the prompt set chosen for
    its fold on the other fold (`best`, `folds` as for the originals), so a variant's answer
    differs from the original's by the pixels alone. Writes build/clip/robustness_scores.csv
    (outputs.ROBUSTNESS_COLUMNS, one file with a `variant` column) and the run's
    "clip_robustness" provenance section; returns the scores. The original embeddings come
    from the embedding cache; each variant's are cached under its own key."""
    sample = variants.robustness_sample(df, study.profile)
    shown = (variants.ORIGINAL, *variants.ROBUSTNESS_VARIANTS)
    options = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    runs = _zero_shot(sample, study, shown, device=device, **options)
    fold_of = prompt_choice.fold_by_image(df, folds)
    frames = [
        prompt_choice.apply_choices(run.scores, best, fold_of).assign(variant=variant)
        for variant, run in runs.items()
        if len(run.scores)
    ]
    scores = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=outputs.ROBUSTNESS_COLUMNS)
    )
    outputs.write_robustness(scores)
    first = runs[variants.ORIGINAL]
    study.record_stage(
        "clip_robustness",
        models=first.run_models,
        weights={m: first.weights(m) for m in first.run_models},
        variants=list(shown),
        prompt_sets="cross-fitted: each fold's set chosen on the other fold (best_prompt_sets)",
        robustness_sample_size=study.profile.robustness_sample_size,
        seed=study.seed,
        n=len(sample),
        images=[int(n) for n in sample["micrograph_no"]],
        failures={v: len(run.failures) for v, run in runs.items() if len(run.failures)},
    )
    return scores


# --------------------------------------------------------------------------- search


def text_to_image_search(
    loaded: ClipModel, query: str, image_ids: np.ndarray, image_embeddings: np.ndarray, k: int = 5
) -> pd.DataFrame:
    """The k images whose embeddings are most similar to the text query's (cosine)."""
    text = embed.encode_texts(loaded, [query])[0]
    sims = np.asarray(image_embeddings, float) @ text
    order = np.argsort(-sims, kind="stable")[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "micrograph_no": image_ids[order],
            "cosine": sims[order],
            "query": query,
            "model": loaded.name,
            "weights": loaded.weights,
            "model_label": loaded.label,
        }
    )


def search_example(run: ZeroShotRun, query: str, *, device: str | None = None):
    """The top 5 images for `query` under the run's first model, scored with the very weights
    the run used (its text encoder reloaded), or None when no model ran."""
    if not run.run_models:
        return None
    model = run.run_models[0]
    searcher = load_identity(run.models[model], device=device)
    ids, embeddings = run.embeddings[model]
    return text_to_image_search(searcher, query, ids, embeddings, k=5)


def stage_labels(run: ZeroShotRun, model: str | None = None) -> list[str]:
    """Labels for titles: 'random weights' (of `model`, or of any model), 'sample data'."""
    models = [model] if model else run.run_models
    random = any(run.status.get(m) == "random" for m in models)
    return (["random weights"] if random else []) + run.data_labels


def record_provenance(
    study: Run, run: ZeroShotRun, best: pd.DataFrame, features_source: str, **parameters
) -> None:
    """Record the CLIP stage's provenance section: models and weights, the prompt sets by
    content, the features the embedding space used, the choices, timing and parameters.
    Returns nothing, so the notebook cell that calls it shows no raw record to a reader."""
    study.record_stage(
        STAGE,
        models=list(run.status),
        weights=run.status,
        features_source=features_source,
        prompt_sets=prompts.prompts_record(run.prompt_sets),
        best_prompt_sets=best[["model", "task", "prompt_set"]].to_dict("records"),
        timing=run.timing,
        parameters={"seed": study.seed, "n_boot": study.n_boot, **parameters},
    )
