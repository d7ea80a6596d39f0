"""Ask VLMs the study's questions about a stratified sample, through the answer cache.

A run is models x (task, prompt set) x context x one mode, over one seeded sample stratified
by technique family. Every question goes through the SQLite cache (`cache.py`): answers are
committed per chunk, so a killed run loses at most its chunk in flight, and a rerun asks only
what is missing. The results land in `build/vlm/answers.csv` (one row per question; the input
of notebook 05) and `build/vlm/descriptions.csv` (the open question).

A model that cannot be loaded here (a hub id without network or cache) is replaced by the tiny
random-weight model of its family, through the same hf loading path, after a loud
`provenance.substitute` (an error under STRICT=1).

CLI: `python -m microqa vlm --backend hf|openai --model M [--model M2] --dataset DIR
[--mode score|generate] [--n 150|all] [--context none,clip_topk,clip_neighbours]
[--base-url URL]`; see `--help`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from PIL import Image

from microqa import config, dataset, provenance, taxonomy
from microqa.vlm import questions
from microqa.vlm.backends import load_backend
from microqa.vlm.base import Backend, VLMRequest
from microqa.vlm.cache import (
    Answer,
    AnswerCache,
    AnswerKey,
    canonical_params,
    prompt_hash,
    sha256_file,
)
from microqa.vlm.context import ClipContext
from microqa.vlm.parsing import keyword_recall, map_description, parse_choice

ANSWER_COLUMNS = [
    "micrograph_no",
    "model",
    "backend",
    "weights",
    "task",
    "context",
    "mode",
    "prompt_set",
    "permutation",
    "truth",
    "prediction",
    "probabilities",
    "latency_s",
    "visual_tokens",
    "raw_text",
    "cached",
]
DESCRIPTION_COLUMNS = [
    "micrograph_no",
    "model",
    "backend",
    "weights",
    "technique_truth",
    "category_truth",
    "technique_pred",
    "category_pred",
    "keyword_recall",
    "n_keywords",
    "latency_s",
    "visual_tokens",
    "raw_text",
    "cached",
]
MODES = ("score", "generate")


def answers_path() -> Path:
    return config.build_dir() / "vlm" / "answers.csv"


def descriptions_path() -> Path:
    return config.build_dir() / "vlm" / "descriptions.csv"


def default_cache_path() -> Path:
    """Kept under data/cache (not build/), so `make clean` does not throw answers away."""
    return config.cache_dir() / "vlm_answers.sqlite"


@dataclass
class RunSettings:
    mode: str = "score"
    contexts: tuple[str, ...] = ("none",)
    jobs: tuple[tuple[str, str], ...] = questions.DEFAULT_JOBS
    permute: bool = False
    seed: int = 0
    max_new_tokens: int = 16  # room for "The answer is D." in generate mode
    describe: bool = True
    describe_tokens: int = 160
    chunk_size: int = 8  # questions per backend call and per cache commit
    image_budget: int | None = None  # passed to the backend; part of the cache key

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for context in self.contexts:
            if context not in questions.CONTEXTS:
                raise ValueError(f"unknown context {context!r}; choose from {questions.CONTEXTS}")


@dataclass
class OpenedModel:
    """A loaded backend and the model name the user asked for (the tables' `model`)."""

    label: str
    backend: Backend
    substituted: bool = False


@dataclass
class StudyResult:
    answers: pd.DataFrame
    descriptions: pd.DataFrame
    skipped: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)


# --- sample and models --------------------------------------------------------------------------


def question_sample(records: pd.DataFrame, n: int | str | None, *, seed: int = 0) -> pd.DataFrame:
    """The seeded QA sample, stratified by technique family, over microscopy images (the
    'Other' family, photographs and tomography, has no option in the technique question)."""
    eligible = records[records["technique_family"].isin(taxonomy.TECHNIQUE_FAMILIES)]
    return dataset.stratified_sample(eligible, n, by="technique_family", seed=seed)


def _hub_reason(model: str) -> str | None:
    """Why `model` cannot be loaded here, or None when it can (local dir, hub cache, network)."""
    if Path(model).expanduser().is_dir():
        return None
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
        if constants.HF_HUB_OFFLINE:
            return f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except ImportError:
        host = "huggingface.co"
    # A quick reachability probe: transformers itself would retry for half a minute first.
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return f"{model} is not cached locally and {host} is unreachable ({exc})"
    return None


def open_model(backend: str, model: str, **options: Any) -> OpenedModel:
    """Load `model`; for the hf backend, a model unavailable here becomes its tiny stand-in."""
    if backend == "hf":
        reason = _hub_reason(model)
        if reason:
            from microqa import tiny

            print(f"cannot load {model}: {reason}", file=sys.stderr)
            local = tiny.offline_vlm_dir(model)  # declares the substitute; raises if STRICT=1
            return OpenedModel(model, load_backend("hf", str(local), **options), True)
    return OpenedModel(model, load_backend(backend, model, **options))


# --- one model ---------------------------------------------------------------------------------


@dataclass
class _Item:
    row: pd.Series
    image_sha: str
    key: AnswerKey
    prompt: str
    question: questions.Question | None  # None: the descriptive question
    truth: str | None = None


def _open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except OSError as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


def _key(
    opened: OpenedModel,
    prompt: str,
    letters: Sequence[str],
    image_sha: str,
    mode: str,
    params: dict[str, Any],
) -> AnswerKey:
    b = opened.backend
    return AnswerKey(
        b.name,
        b.model_id,
        b.revision,
        prompt_hash(prompt, None, tuple(letters)),
        image_sha,
        mode,
        canonical_params(params),
    )


def _answer_all(
    opened: OpenedModel,
    items: list[_Item],
    mode: str,
    settings: RunSettings,
    cache: AnswerCache,
    *,
    max_new_tokens: int,
) -> tuple[dict[str, Answer], set[str]]:
    """Answers for every item: cached ones read, missing ones asked in chunks and stored."""
    found = cache.get_many([it.key for it in items])
    fresh: set[str] = set()
    missing = [it for it in items if it.key.key not in found]
    unique: dict[str, _Item] = {}
    for it in missing:  # the same question twice in one run is asked once
        unique.setdefault(it.key.key, it)
    todo = list(unique.values())
    for start in range(0, len(todo), settings.chunk_size):
        chunk = todo[start : start + settings.chunk_size]
        reqs = [VLMRequest(_open_image(it.row["image_path"]), it.prompt) for it in chunk]
        if mode == "score":
            letters = list(chunk[0].question.letters)
            results = opened.backend.score(reqs, letters)
            stored = []
            for it, res in zip(chunk, results, strict=True):
                probs = res.probabilities or None
                choice = max(probs, key=probs.get) if probs else None
                top = max(res.logprobs, key=res.logprobs.get) if res.logprobs else ""
                stored.append(
                    (it.key, Answer(top, choice, probs, res.latency_s, res.visual_tokens))
                )
        else:
            results = opened.backend.generate(reqs, max_new_tokens=max_new_tokens)
            stored = []
            for it, res in zip(chunk, results, strict=True):
                q = it.question
                choice = None
                if q is not None:
                    options = {
                        letter: (text, name)
                        for letter, text, name in zip(
                            q.letters, q.option_texts, q.classes, strict=True
                        )
                    }
                    choice = parse_choice(res.text, q.letters, options)
                stored.append(
                    (it.key, Answer(res.text, choice, None, res.latency_s, res.visual_tokens))
                )
        cache.put_many(stored)  # committed: a kill after this line loses nothing of the chunk
        for key, answer in stored:
            found[key.key] = answer
            fresh.add(key.key)
    return found, fresh


def run_model(
    opened: OpenedModel,
    sample: pd.DataFrame,
    settings: RunSettings,
    cache: AnswerCache,
    context: ClipContext | None = None,
    *,
    log=print,
) -> StudyResult:
    """Every question of `settings` about every image of `sample`, for one model."""
    backend = opened.backend
    shas = {int(r.micrograph_no): sha256_file(r.image_path) for r in sample.itertuples()}
    base = {"model": opened.label, "backend": backend.name, "weights": backend.weights}
    rows, skipped = [], []
    for task, pset in settings.jobs:
        column = taxonomy.TASKS[task][0]
        contexts = settings.contexts if pset == "study" else ("none",)
        for variant in contexts:
            if variant != "none":
                ok, reason = (
                    (False, "no CLIP context given")
                    if context is None
                    else (context.available(variant))
                )
                if not ok:
                    skipped.append(
                        {
                            **base,
                            "task": task,
                            "prompt_set": pset,
                            "context": variant,
                            "n_skipped": len(sample),
                            "reason": reason,
                        }
                    )
                    continue
            items, no_truth, no_context = [], 0, 0
            for _, row in sample.iterrows():
                truth = row[column]
                if truth is None or truth != truth:
                    no_truth += 1
                    continue
                mno = int(row["micrograph_no"])
                text = context.render(variant, mno, task) if variant != "none" else ""
                if text is None:
                    no_context += 1
                    continue
                q = questions.build_question(
                    task,
                    pset,
                    context=variant,
                    context_text=text,
                    permute=settings.permute,
                    seed=settings.seed,
                    image_key=str(mno),
                )
                params = (
                    {"letters": list(q.letters)}
                    if settings.mode == "score"
                    else {"max_new_tokens": settings.max_new_tokens}
                )
                params["image_budget"] = settings.image_budget
                key = _key(opened, q.prompt, q.letters, shas[mno], settings.mode, params)
                items.append(_Item(row, shas[mno], key, q.prompt, q, truth))
            for count, why in (
                (no_truth, f"no {column} label"),
                (no_context, "no CLIP scores/features for the image"),
            ):
                if count:
                    skipped.append(
                        {
                            **base,
                            "task": task,
                            "prompt_set": pset,
                            "context": variant,
                            "n_skipped": count,
                            "reason": why,
                        }
                    )
            found, fresh = _answer_all(
                opened,
                items,
                settings.mode,
                settings,
                cache,
                max_new_tokens=settings.max_new_tokens,
            )
            log(
                f"{opened.label} {task}/{pset}/{variant}: {len(items)} questions, "
                f"{len(fresh)} asked now, {len(items) - len(fresh)} from the cache"
            )
            for it in items:
                answer, q = found[it.key.key], it.question
                probs = ""
                if answer.probabilities:
                    probs = json.dumps({q.class_of(k): v for k, v in answer.probabilities.items()})
                rows.append(
                    {
                        **base,
                        "micrograph_no": int(it.row["micrograph_no"]),
                        "task": task,
                        "context": variant,
                        "mode": settings.mode,
                        "prompt_set": pset,
                        "permutation": q.permutation,
                        "truth": it.truth,
                        "prediction": q.class_of(answer.choice)
                        if answer.choice in q.letters
                        else None,
                        "probabilities": probs,
                        "latency_s": answer.latency_s,
                        "visual_tokens": answer.visual_tokens,
                        "raw_text": answer.raw_text,
                        "cached": it.key.key not in fresh,
                    }
                )
    descriptions = (
        _describe(opened, sample, settings, cache, shas, base, log)
        if (settings.describe)
        else pd.DataFrame(columns=DESCRIPTION_COLUMNS)
    )
    answers = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    return StudyResult(answers, descriptions, skipped, {opened.label: backend.weights})


def _describe(opened, sample, settings, cache, shas, base, log) -> pd.DataFrame:
    """The open question, mapped back to the taxonomy, with keyword recall."""
    params = {"max_new_tokens": settings.describe_tokens, "image_budget": settings.image_budget}
    items = [
        _Item(
            row,
            shas[int(row["micrograph_no"])],
            _key(
                opened,
                questions.DESCRIBE_PROMPT,
                (),
                shas[int(row["micrograph_no"])],
                "generate",
                params,
            ),
            questions.DESCRIBE_PROMPT,
            None,
        )
        for _, row in sample.iterrows()
    ]
    found, fresh = _answer_all(
        opened, items, "generate", settings, cache, max_new_tokens=settings.describe_tokens
    )
    log(f"{opened.label} describe: {len(items)} questions, {len(fresh)} asked now")
    rows = []
    for it in items:
        answer = found[it.key.key]
        technique, category = map_description(answer.raw_text)
        rows.append(
            {
                **base,
                "micrograph_no": int(it.row["micrograph_no"]),
                "technique_truth": it.row["technique_family"],
                "category_truth": it.row["primary_category"],
                "technique_pred": technique,
                "category_pred": category,
                "keyword_recall": keyword_recall(answer.raw_text, it.row["keyword_list"]),
                "n_keywords": len(it.row["keyword_list"]),
                "latency_s": answer.latency_s,
                "visual_tokens": answer.visual_tokens,
                "raw_text": answer.raw_text,
                "cached": it.key.key not in fresh,
            }
        )
    return pd.DataFrame(rows, columns=DESCRIPTION_COLUMNS)


# --- the study -----------------------------------------------------------------------------------


def run_study(
    models: Sequence[str],
    *,
    backend: str,
    sample: pd.DataFrame,
    settings: RunSettings,
    context: ClipContext | None = None,
    cache_path: Path | str | None = None,
    backend_options: dict[str, Any] | None = None,
    log=print,
) -> StudyResult:
    """Every model in turn (one loaded at a time), all through one answer cache."""
    options = {**(backend_options or {}), "image_budget": settings.image_budget}
    parts: list[StudyResult] = []
    with AnswerCache(cache_path or default_cache_path()) as cache:
        for model in models:
            opened = open_model(backend, model, **options)
            parts.append(run_model(opened, sample, settings, cache, context, log=log))
            del opened  # free the weights before the next model
    return StudyResult(
        answers=pd.concat([p.answers for p in parts], ignore_index=True),
        descriptions=pd.concat([p.descriptions for p in parts], ignore_index=True),
        skipped=[s for p in parts for s in p.skipped],
        weights={k: v for p in parts for k, v in p.weights.items()},
    )


def _merge_write(df: pd.DataFrame, path: Path, columns: list[str], loader) -> Path:
    """Replace the rows of these (model, backend) pairs in `path`, keep the others; atomic.

    Every text field is quoted: raw model output can hold carriage returns, which an
    unquoted CSV field would turn into broken rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = loader(path)
        ran = set(zip(df["model"], df["backend"], strict=True))
        keep = np.array(
            [pair not in ran for pair in zip(old["model"], old["backend"], strict=True)], dtype=bool
        )
        old = old.loc[keep]
        df = pd.concat([old[columns].astype(object), df[columns].astype(object)], ignore_index=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    df[columns].astype(object).to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    os.replace(tmp, path)
    return path


def save_answers(result: StudyResult, *, fresh: bool = False) -> tuple[Path, Path]:
    """Write answers.csv and descriptions.csv (`fresh`: replace them, else merge by model)."""
    paths = (answers_path(), descriptions_path())
    if fresh:
        for path in paths:
            path.unlink(missing_ok=True)
    _merge_write(result.answers, paths[0], ANSWER_COLUMNS, load_answers)
    _merge_write(result.descriptions, paths[1], DESCRIPTION_COLUMNS, load_descriptions)
    return paths


def load_answers(path: Path | str | None = None) -> pd.DataFrame:
    """`build/vlm/answers.csv` as a DataFrame (prediction None where unanswered)."""
    path = Path(path) if path else answers_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no VLM answers at {path}; run notebook 04 or `python -m microqa vlm`"
        )
    return _typed(
        pd.read_csv(path, keep_default_na=False, dtype=str),
        numeric=("micrograph_no", "latency_s", "visual_tokens"),
        optional=("prediction",),
    )


def load_descriptions(path: Path | str | None = None) -> pd.DataFrame:
    """`build/vlm/descriptions.csv` (mapped predictions None where the text named none)."""
    path = Path(path) if path else descriptions_path()
    if not path.is_file():
        raise FileNotFoundError(f"no VLM descriptions at {path}; run notebook 04")
    return _typed(
        pd.read_csv(path, keep_default_na=False, dtype=str),
        numeric=("micrograph_no", "keyword_recall", "n_keywords", "latency_s", "visual_tokens"),
        optional=("technique_pred", "category_pred", "technique_truth", "category_truth"),
    )


def _typed(df: pd.DataFrame, *, numeric: Sequence[str], optional: Sequence[str]) -> pd.DataFrame:
    for column in numeric:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="raise")
    for column in optional:
        df[column] = df[column].astype(object).where(df[column] != "", None)
    df["cached"] = df["cached"].str.lower() == "true"
    df["micrograph_no"] = df["micrograph_no"].astype(int)
    return df


def probability_matrix(answers: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """Rows of option probabilities in `classes` order (score mode), else None."""
    if answers.empty or (answers["probabilities"] == "").any():
        return None
    parsed = [json.loads(p) for p in answers["probabilities"]]
    return np.array([[p.get(c, 0.0) for c in classes] for p in parsed])


def record_provenance(
    result: StudyResult,
    settings: RunSettings,
    *,
    backend: str,
    sample_size: int,
    context: ClipContext | None,
) -> dict[str, Any]:
    return provenance.record_stage(
        "vlm",
        models=list(result.weights),
        backend=backend,
        weights=result.weights,
        mode=settings.mode,
        n=sample_size,
        contexts=list(settings.contexts),
        permute_options=settings.permute,
        seed=settings.seed,
        image_budget=settings.image_budget,
        clip_model=context.clip_model if context else None,
        clip_features=context.features_source if context else None,
        skipped=result.skipped,
        keep_fallbacks=True,
    )


# --- CLI -----------------------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("hf", "openai"), default="hf")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="HF id or local dir (hf), or the server's model name; repeatable",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="dataset directory (default: the one notebook 01 chose)",
    )
    parser.add_argument("--mode", choices=MODES, default="score")
    parser.add_argument("--n", default="150", help="sample size, or 'all'")
    parser.add_argument(
        "--context", default="none", help="comma-separated: none,clip_topk,clip_neighbours"
    )
    parser.add_argument(
        "--tasks", default=None, help="comma-separated task/prompt_set pairs (default: all four)"
    )
    parser.add_argument("--permute", action="store_true", help="permute options per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-describe", action="store_true", help="skip the open question")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server, .../v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--image-budget", type=int, default=None, help="max pixels per image")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument(
        "--chunk-size", type=int, default=8, help="questions per backend call and per cache commit"
    )
    parser.add_argument("--cache", type=Path, default=None, help="answer cache (SQLite)")
    parser.add_argument("--clip-dir", type=Path, default=None, help="CLIP stage outputs")


def run_cli(args: argparse.Namespace) -> int:
    dataset_dir = args.dataset or dataset.active_dataset_dir()
    records = dataset.load_records(dataset_dir)
    n = args.n if args.n == "all" else int(args.n)
    sample = question_sample(records, n, seed=args.seed)
    jobs = questions.DEFAULT_JOBS
    if args.tasks:
        jobs = tuple(tuple(pair.split("/", 1)) for pair in args.tasks.split(","))
    settings = RunSettings(
        mode=args.mode,
        contexts=tuple(c.strip() for c in args.context.split(",") if c.strip()),
        jobs=jobs,
        permute=args.permute,
        seed=args.seed,
        describe=not args.no_describe,
        chunk_size=args.chunk_size,
        image_budget=args.image_budget,
    )
    needs_clip = any(c != "none" for c in settings.contexts)
    context = ClipContext(records, directory=args.clip_dir) if needs_clip else None
    options = {
        "base_url": args.base_url,
        "api_key": args.api_key,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "timeout": args.timeout,
    }
    start = time.perf_counter()
    try:
        result = run_study(
            args.model,
            backend=args.backend,
            sample=sample,
            settings=settings,
            context=context,
            cache_path=args.cache,
            backend_options=options,
        )
    except provenance.StrictModeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    answers, descriptions = save_answers(result)
    record_provenance(
        result, settings, backend=args.backend, sample_size=len(sample), context=context
    )
    for skip in result.skipped:
        print(f"skipped {skip['n_skipped']} {skip['task']}/{skip['context']}: {skip['reason']}")
    print(
        f"{len(result.answers)} answers -> {answers}; {len(result.descriptions)} descriptions "
        f"-> {descriptions} ({time.perf_counter() - start:.1f} s)"
    )
    return 0
