"""`python -m microqa vlm`: ask VLMs the study's questions about a dataset (cached, resumable).

`python -m microqa vlm --backend hf|openai --model M [--model M2] --dataset DIR
[--mode score|generate] [--n 150|all] [--context none,clip_topk,clip_neighbours]
[--fixed-order] [--base-url URL [--base-url URL2 ...] | --base-url FILE] [--concurrency 64]`;
see `--help`.

Exit status: 0 all answered; 1 some images could not be decoded (named on stderr and in
build/vlm/failures.csv; everything else answered and saved); 2 bad input or another expected
error, printed as one line `error: ...` (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

from microqa import provenance
from microqa.data import dataset
from microqa.run import Run
from microqa.vlm import outputs, questions, runner, stage
from microqa.vlm.context import ClipContext

EXPECTED_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    sqlite3.DatabaseError,
    provenance.StrictModeError,
)


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
    parser.add_argument("--mode", choices=runner.MODES, default="score")
    parser.add_argument("--n", default="150", help="sample size, or 'all'")
    parser.add_argument(
        "--context", default="none", help="comma-separated: none,clip_topk,clip_neighbours"
    )
    parser.add_argument(
        "--tasks", default=None, help="comma-separated task/prompt_set pairs (default: all four)"
    )
    parser.add_argument("--permute", action="store_true", help="permute options per image")
    parser.add_argument(
        "--fixed-order",
        action="store_true",
        help="ask each question once in its option order, not in every cyclic rotation",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-describe", action="store_true", help="skip the open question")
    parser.add_argument(
        "--base-url",
        action="append",
        default=None,
        help="OpenAI-compatible server, .../v1; repeat it, separate URLs by commas or name a "
        "file listing them (one per line) for several replicas: each image goes to one",
    )
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--image-budget", type=int, default=None, help="max pixels per image")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="openai: requests in flight per replica, across images (default 64)",
    )
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="answer cache (SQLite)")
    parser.add_argument("--clip-dir", type=Path, default=None, help="CLIP stage outputs")
    parser.add_argument(
        "--variant",
        default="original",
        help="image shown with each question: original, hflip, rot90, gray, masked, blank "
        "(the no-image baseline), or no_image (text only, where the backend allows it)",
    )


def _jobs(spec: str | None) -> tuple[tuple[str, str], ...]:
    if not spec:
        return questions.DEFAULT_JOBS
    jobs = []
    for pair in spec.split(","):
        task, _, prompt_set = pair.strip().partition("/")
        questions.prompt_set(task, prompt_set or "study")  # raises naming the known pairs
        jobs.append((task, prompt_set or "study"))
    return tuple(jobs)


def _sample_size(n: str) -> int | str:
    if n == "all":
        return n
    try:
        value = int(n)
    except ValueError:
        raise ValueError(f"--n must be a number of images or 'all', got {n!r}") from None
    if value < 1:
        raise ValueError(f"--n must be at least 1, got {value}")
    return value


def run_cli(args: argparse.Namespace) -> int:
    """Expected errors (EXPECTED_ERRORS) reach `microqa.cli`, which prints them as one line."""
    run = Run.start("vlm-cli", profile=None)  # MICROQA_PROFILE, else full
    dataset_dir = args.dataset or run.dataset.dir
    records = dataset.load_records(dataset_dir)
    sample = runner.question_sample(records, _sample_size(args.n), seed=args.seed)
    settings = runner.RunSettings(
        mode=args.mode,
        contexts=tuple(c.strip() for c in args.context.split(",") if c.strip()),
        jobs=_jobs(args.tasks),
        permute=args.permute,
        rotate=not args.fixed_order,
        seed=args.seed,
        describe=not args.no_describe,
        image_budget=args.image_budget,
        variant=args.variant,
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
    result = runner.run_study(
        args.model,
        backend=args.backend,
        sample=sample,
        settings=settings,
        context=context,
        cache_path=args.cache,
        backend_options=options,
        record=run.record,
    )
    # a variant run adds its rows; the original run's failures.csv stays
    answers, descriptions = outputs.save_answers(result, failures=settings.variant == "original")
    stage.record_provenance(
        run, result, settings, backend=args.backend, sample_size=len(sample), context=context
    )
    for skip in result.skipped:
        print(f"skipped {skip['n_skipped']} {skip['task']}/{skip['context']}: {skip['reason']}")
    print(
        f"{len(result.answers)} answers -> {answers}; {len(result.descriptions)} descriptions "
        f"-> {descriptions} ({time.perf_counter() - start:.1f} s)"
    )
    if result.failures:
        print(
            f"{len(result.failures)} images could not be decoded; listed in "
            f"{outputs.failures_path()}",
            file=sys.stderr,
        )
        return 1
    return 0
