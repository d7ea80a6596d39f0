"""Notebook 04's VLM stage of a run: the main run, the image-variant controls, the provenance.

- `run_for_notebook`: every model of the run's profile asked every question about the
  sample (CLIP context from the CLIP stage); answers saved fresh to build/vlm.
- `run_variants`: the shortcut and robustness controls (issue 19). Each model asked about
  the robustness sample (`data.variants.robustness_sample`, the same images the CLIP stage
  scores under each variant) with a blank image in place of the micrograph (the no-image
  baseline) and under each label-preserving transform (`variants.ROBUSTNESS_VARIANTS`):
  score mode, no CLIP context, the study's wording, no open question. The answers are merged
  into answers.csv (rows of other variants, the original ones included, are kept).
- `record_provenance`: the stage's provenance section of one run of settings.

"No image at all" (`asking.NO_IMAGE`) is not one of the controls run here: only a backend that
can send a question without an image allows it, and the others refuse it with a one-line error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from microqa.data import variants
from microqa.run import Run
from microqa.vlm import asking, outputs
from microqa.vlm.cache import AnswerCache
from microqa.vlm.context import ClipContext
from microqa.vlm.runner import (
    RunSettings,
    StudyResult,
    combine,
    note_failures,
    open_model,
    run_model,
    run_study,
)

STUDY_WORDING = "study"
# what each control shows instead of the micrograph: the no-image baseline, then the transforms
CONTROL_VARIANTS = (variants.BLANK, *variants.ROBUSTNESS_VARIANTS)
VARIANTS_STAGE = "vlm_variants"  # their provenance section (the main run's is "vlm")


def run_for_notebook(
    run: Run,
    records: pd.DataFrame,
    sample: pd.DataFrame,
    settings: RunSettings,
    *,
    backend: str,
    base_url: str = "",
    clip_model: str = "",
) -> tuple[StudyResult, ClipContext]:
    """Notebook 04's stage: the run's VLMs asked every question about `sample` (CLIP context
    from the CLIP stage, its models in the run's order), answers saved fresh to build/vlm,
    and the stage's provenance (with its substitutes) recorded in the run."""
    run.begin_stage("vlm")  # this run's record and substitutes only
    context = ClipContext(records, clip_model=clip_model or None, preferred=run.profile.clip_models)
    study = run_study(
        run.profile.vlm_models,
        backend=backend,
        sample=sample,
        settings=settings,
        context=context,
        backend_options={"base_url": base_url or None},
        record=run.record,
    )
    outputs.save_answers(study, fresh=True)
    record_provenance(
        run, study, settings, backend=backend, sample_size=len(sample), context=context
    )
    return study, context


def control_settings(settings: RunSettings) -> RunSettings:
    """The main run's settings as the controls ask: score mode, no CLIP context, the study's
    wording only, no open question and no agreement subset (the option rotations, the seed and
    the image budget stay the main run's, so an answer differs from the original's only by
    the image shown)."""
    jobs = tuple(job for job in settings.jobs if job[1] == STUDY_WORDING)
    if not jobs:
        raise ValueError(
            f"the image-variant controls ask the study's wording; the run asks none of it "
            f"(jobs: {', '.join(f'{t}/{p}' for t, p in settings.jobs)})"
        )
    return replace(
        settings, mode="score", contexts=("none",), jobs=jobs, describe=False, agreement_n=0
    )


def run_variants(
    run: Run,
    records: pd.DataFrame,
    settings: RunSettings,
    *,
    backend: str,
    base_url: str = "",
    shown: tuple[str, ...] = CONTROL_VARIANTS,
    log=print,
) -> StudyResult:
    """The controls of the run's VLMs on its robustness sample (module doc): each model loaded
    once and asked under every variant of `shown`, through the answer cache; the answers merged
    into answers.csv (other variants' rows kept) and recorded in provenance."""
    sample = variants.robustness_sample(records, run.profile)
    asked = control_settings(settings)
    for name in shown:
        asking.check_variant(name)  # a one-line error before any model is loaded
    options = {"base_url": base_url or None, "image_budget": settings.image_budget}
    parts: list[StudyResult] = []
    failures: dict[int, dict[str, Any]] = {}
    with AnswerCache(outputs.default_cache_path()) as cache:
        for model in run.profile.vlm_models:
            opened = open_model(backend, model, record=run.record, **options)
            model_parts = [
                run_model(opened, sample, replace(asked, variant=name), cache, log=log)
                for name in shown
            ]
            del opened  # free the weights before the next model
            parts += model_parts
            note_failures(model_parts, failures)
    result = combine(parts, list(failures.values()))
    outputs.save_answers(result, failures=False)  # the main run's failures.csv stays
    run.record_stage(
        VARIANTS_STAGE,
        models=list(result.weights),
        backend=backend,
        weights=result.weights,
        variants=list(shown),
        mode=asked.mode,
        jobs=[list(job) for job in asked.jobs],
        contexts=list(asked.contexts),
        option_rotations=asked.rotate,
        seed=asked.seed,
        robustness_sample_size=run.profile.robustness_sample_size,
        n=len(sample),
        images=[int(n) for n in sample["micrograph_no"]],
        image_budget=result.image_budgets,
        failures=len(result.failures),
    )
    return result


def record_provenance(
    run: Run,
    result: StudyResult,
    settings: RunSettings,
    *,
    backend: str,
    sample_size: int,
    context: ClipContext | None,
) -> dict[str, Any]:
    # a variant run is its own record, so it never replaces the original run's
    stage = "vlm" if settings.variant == "original" else f"vlm_{settings.variant}"
    return run.record_stage(
        stage,
        models=list(result.weights),
        backend=backend,
        weights=result.weights,
        mode=settings.mode,
        n=sample_size,
        contexts=list(settings.contexts),
        permute_options=settings.permute,
        option_rotations=settings.rotate,
        agreement_n=settings.agreement_n,  # images also asked in the other mode
        image_variant=settings.variant,  # what each question showed (blank: no-image baseline)
        seed=settings.seed,
        image_budget=result.image_budgets,  # the budget each model ran at, as resolved
        servers=result.servers or None,  # replicas answered from (openai backend)
        clip_model=context.clip_model if context else None,
        clip_features=context.features_source if context else None,
        skipped=result.skipped,
        failures=len(result.failures),
    )
