"""Ask VLMs the study's questions about a stratified sample, image by image, through the cache.

A run is models x (task, prompt set) x context x option rotation x one mode, over one seeded
sample stratified by technique family. Answering is image-major: every question still missing
from the SQLite answer cache (`cache.py`) is grouped by image, the image is decoded once, and
the backend answers all of that image's questions in one call (`score_image` /
`generate_image`: one image pass and one shared prefix for the hf backend). Answers are
committed per image, so a killed run loses at most the image in flight and a rerun asks only
what is missing. An image that cannot be decoded is skipped, named once on stderr and listed
in the run's failures; the rest are answered. Outputs: `microqa.vlm.outputs`.

A model that cannot be loaded here (a hub id without network or cache) is replaced by the tiny
random-weight model of its family, through the same hf loading path, after a loud
`provenance.substitute` (an error under STRICT=1).

CLI: `python -m microqa vlm ...` (`microqa.vlm.cli`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from microqa import hub, provenance
from microqa.data import dataset, taxonomy
from microqa.files import sha256_file
from microqa.vlm import asking, copies, questions
from microqa.vlm.backends import load_backend
from microqa.vlm.base import Backend
from microqa.vlm.cache import Answer, AnswerCache, AnswerKey, canonical_params, prompt_hash
from microqa.vlm.context import ClipContext
from microqa.vlm.outputs import (  # noqa: F401  (the notebook's and users' entry points)
    ANSWER_COLUMNS,
    DESCRIPTION_COLUMNS,
    default_cache_path,
    load_answers,
    load_descriptions,
    probability_matrix,
    save_answers,
)
from microqa.vlm.parsing import keyword_recall, map_description

MODES = ("score", "generate")


@dataclass
class RunSettings:
    mode: str = "score"
    contexts: tuple[str, ...] = ("none",)
    jobs: tuple[tuple[str, str], ...] = questions.DEFAULT_JOBS
    permute: bool = False
    seed: int = 0
    # every cyclic rotation of the options (MMBench's CircularEval); False: the fixed order
    rotate: bool = True
    max_new_tokens: int = 16  # room for "The answer is D." in generate mode
    describe: bool = True
    describe_tokens: int = 160
    image_budget: int | None = None  # None: each family's default (microqa.vlm.families)
    # a seeded subset of this many images is also asked in the other mode (no open question),
    # by the same loaded model, to check that score and generate mode agree; 0: skip
    agreement_n: int = 0
    # the image each question shows (data.variants; "blank": the no-image baseline,
    # "no_image": none at all, where the backend allows it); part of every answer key
    variant: str = "original"
    # the study's question wording where it differs ({task: {"question", "options"}}: the
    # profile's vlm_questions); None: microqa.vlm.questions as written
    wording: dict | None = None
    prompt_sets: questions.PromptSets = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.prompt_sets = questions.with_wording(self.wording)
        asking.check_variant(self.variant)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.agreement_n < 0:
            raise ValueError(f"agreement_n must be 0 or more, got {self.agreement_n}")
        for context in self.contexts:
            if context not in questions.CONTEXTS:
                raise ValueError(f"unknown context {context!r}; choose from {questions.CONTEXTS}")
        for task, prompt_set in self.jobs:
            questions.prompt_set(task, prompt_set, self.prompt_sets)  # names the known pairs


@dataclass
class OpenedModel:
    """A loaded backend and the model name the user asked for (the tables' `model`)."""

    label: str
    backend: Backend
    substituted: bool = False
    recipe: copies.Recipe | None = None  # how a worker process opens the same model


@dataclass
class StudyResult:
    answers: pd.DataFrame
    descriptions: pd.DataFrame
    skipped: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    image_budgets: dict[str, int | None] = field(default_factory=dict)  # resolved, per model
    # per model: the server replicas as given (no credentials) and any taken out (openai)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- sample and models --------------------------------------------------------------------------


def question_sample(records: pd.DataFrame, n: int | str | None, *, seed: int = 0) -> pd.DataFrame:
    """The seeded QA sample, stratified by technique family, over every record that some task
    can score. Each question is then asked only where its task has a label: photographs and
    tomograms (family 'Other') and records without a technique get the material questions
    but no technique question; records without a primary category no material question."""
    return dataset.stratified_sample(
        dataset.task_labelled(records), n, by="technique_family", seed=seed
    )


def _hub_reason(model: str) -> str | None:
    """Why `model` cannot be loaded here, or None when it can (local dir, hub cache, network)."""
    if Path(model).expanduser().is_dir():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    reason = hub.unreachable_reason()
    return f"{model} is not cached locally and {reason}" if reason else None


def open_model(
    backend: str, model: str, *, record: provenance.Record | None = None, **options: Any
) -> OpenedModel:
    """Load `model`; for the hf backend, a model unavailable here becomes its tiny stand-in
    (declared in `record`, the run's provenance record)."""
    source, substituted = model, False
    if backend == "hf" and (reason := _hub_reason(model)):
        from microqa.vlm import tiny

        logging.getLogger(__name__).warning("cannot load %s: %s", model, reason)
        # declares the substitute in the run's record; raises if STRICT=1
        source, substituted = str(tiny.offline_vlm_dir(model, record=record)), True
    loaded = load_backend(backend, source, **options)
    # a local model may be copied into worker processes (`copies`); a server is not
    copy = copies.recipe(backend, source, options) if backend == "hf" else None
    return OpenedModel(model, loaded, substituted, copy)


# --- one model ---------------------------------------------------------------------------------


def _key(
    backend: Backend, prompt: str, letters: Sequence[str], sha: str, mode: str, params, variant
):
    params = {**params, "image_budget": backend.image_budget}  # the RESOLVED budget
    return AnswerKey(
        backend.name,
        backend.model_id,
        backend.revision,
        prompt_hash(prompt, None, tuple(letters)),
        sha,
        mode,
        canonical_params(params),
        variant,
    )


def _question_items(opened, sample, settings, context, shas, base, skipped) -> list[asking.Item]:
    """Every multiple-choice question of the run, in job order."""
    backend, items = opened.backend, []
    for task, pset in settings.jobs:
        column = taxonomy.TASKS[task][0]
        rotations = (
            questions.rotations(task, pset, settings.prompt_sets) if settings.rotate else (0,)
        )
        for variant in settings.contexts if pset == "study" else ("none",):
            where = {**base, "task": task, "prompt_set": pset, "context": variant}
            if variant != "none":
                ok, reason = (False, "no CLIP context given")
                if context is not None:
                    ok, reason = context.available(variant)
                if not ok:
                    skipped.append({**where, "n_skipped": len(sample), "reason": reason})
                    continue
            no_truth = no_context = 0
            for _, row in sample.iterrows():
                mno, truth = int(row["micrograph_no"]), row[column]
                if truth not in taxonomy.TASKS[task][1]:  # no label for this task
                    no_truth += 1
                    continue
                text = context.render(variant, mno, task) if variant != "none" else ""
                if text is None:
                    no_context += 1
                    continue
                if mno not in shas:
                    continue  # unreadable file: listed once in the failures
                for rotation in rotations:
                    q = questions.build_question(
                        task,
                        pset,
                        context=variant,
                        context_text=text,
                        permute=settings.permute,
                        seed=settings.seed,
                        image_key=str(mno),
                        rotation=rotation,
                        sets=settings.prompt_sets,
                    )
                    if settings.mode == "score":
                        params, tokens = {"letters": list(q.letters)}, None
                    else:
                        tokens = settings.max_new_tokens
                        params = {"max_new_tokens": tokens}
                    key = _key(
                        backend,
                        q.prompt,
                        q.letters,
                        shas[mno],
                        settings.mode,
                        params,
                        settings.variant,
                    )
                    items.append(asking.Item(row, key, q.prompt, q, tokens, truth))
            for count, why in ((no_truth, f"no {column} label"), (no_context, "no CLIP scores")):
                if count:
                    skipped.append({**where, "n_skipped": count, "reason": why})
    return items


def _describe_items(backend, sample, settings, shas) -> list[asking.Item]:
    tokens = settings.describe_tokens
    return [
        asking.Item(
            row,
            _key(
                backend,
                questions.DESCRIBE_PROMPT,
                (),
                shas[int(row["micrograph_no"])],
                "generate",
                {"max_new_tokens": tokens},
                settings.variant,
            ),
            questions.DESCRIBE_PROMPT,
            None,
            tokens,
        )
        for _, row in sample.iterrows()
        if int(row["micrograph_no"]) in shas
    ]


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
    base = {
        "model": opened.label,
        "backend": backend.name,
        "weights": backend.weights,
        "variant": settings.variant,
    }
    asking.check_backend_allows(backend, settings.variant)  # before any image is read
    failures, skipped, shas = [], [], {}
    for _, row in sample.iterrows():
        try:
            shas[int(row["micrograph_no"])] = sha256_file(row["image_path"])
        except OSError as exc:
            failures.append(asking.failure(row, f"cannot read the file ({exc.strerror or exc})"))
    items = _question_items(opened, sample, settings, context, shas, base, skipped)
    described = _describe_items(backend, sample, settings, shas) if settings.describe else []
    found, fresh = asking.answer_by_image(
        opened, items + described, cache, failures, settings.variant
    )
    answered = [it for it in items if it.key.key in found]
    asked_now = sum(it.key.key in fresh for it in answered)
    log(
        f"{opened.label}: {len(answered)} questions about {len(shas)} images, "
        f"{asked_now} asked now, {len(answered) - asked_now} from the cache"
        + (f"; {len(failures)} images failed" if failures else "")
    )
    rows = [_answer_row(base, it, found[it.key.key], settings, fresh) for it in answered]
    descriptions = [
        _description_row(base, it, found[it.key.key], fresh)
        for it in described
        if it.key.key in found
    ]
    return StudyResult(
        pd.DataFrame(rows, columns=ANSWER_COLUMNS),
        pd.DataFrame(descriptions, columns=DESCRIPTION_COLUMNS),
        skipped,
        {opened.label: backend.weights},
        failures,
        {opened.label: backend.image_budget},
        {opened.label: backend.provenance()} if hasattr(backend, "provenance") else {},
    )


def _answer_row(
    base, it: asking.Item, answer: Answer, settings: RunSettings, fresh
) -> dict[str, Any]:

    q = it.question
    probs = ""
    if answer.probabilities:
        probs = json.dumps({q.class_of(k): v for k, v in answer.probabilities.items()})
    return {
        **base,
        "micrograph_no": int(it.row["micrograph_no"]),
        "task": q.task,
        "context": q.context,
        "mode": settings.mode,
        "prompt_set": q.prompt_set,
        "rotation": q.rotation,
        "permutation": q.permutation,
        "truth": it.truth,
        "prediction": q.class_of(answer.choice) if answer.choice in q.letters else None,
        "probabilities": probs,
        "letter_mass": answer.letter_mass,
        "latency_s": answer.latency_s,
        "visual_tokens": answer.visual_tokens,
        "raw_text": answer.raw_text,
        "cached": it.key.key not in fresh,
    }


def _description_row(base, it: asking.Item, answer: Answer, fresh) -> dict[str, Any]:
    """The open question, mapped back to the taxonomy, with keyword recall."""
    technique, category = map_description(answer.raw_text)
    return {
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
    record: provenance.Record | None = None,
    log=print,
) -> StudyResult:
    """Every model in turn (one loaded at a time), all through one answer cache; with
    `settings.agreement_n`, the agreement subset in the other mode while the model is loaded."""
    options = {**(backend_options or {}), "image_budget": settings.image_budget}
    parts: list[StudyResult] = []
    failures: dict[int, dict[str, Any]] = {}
    agreement: tuple = ()  # (its sample, its settings): the other mode, no open question
    if settings.agreement_n:
        other_mode = MODES[1 - MODES.index(settings.mode)]
        agreement = (
            question_sample(sample, settings.agreement_n, seed=settings.seed),
            replace(settings, mode=other_mode, describe=False, agreement_n=0),
        )
    with AnswerCache(cache_path or default_cache_path()) as cache:
        for model in models:
            opened = open_model(backend, model, record=record, **options)
            model_parts = [run_model(opened, sample, settings, cache, context, log=log)]
            if agreement:
                model_parts.append(run_model(opened, *agreement, cache, context, log=log))
            del opened  # free the weights before the next model
            parts += model_parts
            note_failures(model_parts, failures)
    return combine(parts, list(failures.values()))


def note_failures(parts: Sequence[StudyResult], failures: dict[int, dict[str, Any]]) -> None:
    """Add the failures of `parts` to `failures` (by micrograph_no), naming each bad image
    once on stderr, not once per model or variant."""
    for failure in (f for part in parts for f in part.failures):
        if failure["micrograph_no"] not in failures:
            failures[failure["micrograph_no"]] = failure
            print(
                f"failed: {failure['micrograph_no']} {failure['image_file']}: {failure['reason']}",
                file=sys.stderr,
            )


def combine(parts: Sequence[StudyResult], failures: list[dict[str, Any]]) -> StudyResult:
    """One result of several runs (models, modes, variants); `failures`: each image once."""
    return StudyResult(
        answers=pd.concat([p.answers for p in parts], ignore_index=True),
        descriptions=pd.concat([p.descriptions for p in parts], ignore_index=True),
        skipped=[s for p in parts for s in p.skipped],
        weights={k: v for p in parts for k, v in p.weights.items()},
        failures=failures,
        image_budgets={k: v for p in parts for k, v in p.image_budgets.items()},
        servers={k: v for p in parts for k, v in p.servers.items()},
    )
