"""How the runner's pending questions reach a backend: image by image.

A server backend (`answer_images`: the OpenAI-compatible one) gets every pending question of
every image, the open one included, and keeps many images in flight (`microqa.vlm.inflight`);
answers are committed per image as each finishes. The rest of this note is the local path.

Every pending multiple-choice question about one image goes to the backend in one call
(`score_image` / `generate_image`), so the image is decoded, preprocessed and encoded once
and, in the hf backend, its visual prefix prefilled once (issue: one image pass per image).
The open question's long generations are batched across images instead. Answers are
committed to the cache per image (or per batch), so a kill loses at most the one in flight;
an undecodable image or a server's failed question is listed in the failures, never cached.

The image asked about is the run's variant of the decoded micrograph (`data.variants`:
``blank`` is the no-image baseline with a neutral image of the same size). ``no_image``
(`NO_IMAGE`) sends the questions with no image at all, which only a backend declaring
``text_only = True`` accepts; any other backend is refused with an error naming it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from microqa.data import images, variants
from microqa.vlm import copies, questions
from microqa.vlm.base import Ask, Backend, ImageJob, VLMRequest, answer_image, generate_image
from microqa.vlm.cache import Answer, AnswerKey
from microqa.vlm.parsing import parse_choice

NO_IMAGE = "no_image"  # the questions without any image (where the backend allows it)
RUN_VARIANTS = (*variants.VARIANTS, NO_IMAGE)


def check_variant(name: str) -> str:
    """`name` if the VLM stage can run it, else a one-line error listing the choices."""
    if name not in RUN_VARIANTS:
        raise ValueError(f"unknown image variant {name!r}; choose one of {', '.join(RUN_VARIANTS)}")
    return name


def check_backend_allows(backend: Backend, variant: str) -> None:
    """Refuse `no_image` on a backend that cannot send a question without an image."""
    if variant == NO_IMAGE and not getattr(backend, "text_only", False):
        raise ValueError(
            f"backend {backend.name!r} ({backend.model_id}) cannot ask without an image; "
            "use --variant blank (a neutral image of the same size) instead"
        )


@dataclass
class Item:
    """One pending question about one image of the sample."""

    row: pd.Series  # the image's record
    key: AnswerKey
    prompt: str
    question: questions.Question | None  # None: the open (descriptive) question
    max_new_tokens: int | None = None  # None: scored
    truth: str | None = None


def image_file(path: str | Path) -> str:
    """An image's path as a reader knows it: relative to its dataset ("images/000123.jpg")."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def failure(row, reason: str) -> dict[str, Any]:
    return {
        "micrograph_no": int(row["micrograph_no"]),
        "image_file": image_file(row["image_path"]),
        "reason": reason,
    }


def unanswered(row, errors: list[str]) -> dict[str, Any]:
    """The failure of an image some of whose questions got no answer (a server's errors)."""
    reasons = "; ".join(dict.fromkeys(errors))
    return failure(row, f"{len(errors)} questions unanswered: {reasons}")


def shown_image(row, variant: str):
    """The image the questions about `row` show: its `variant` of the decoded micrograph, or
    None for `NO_IMAGE`. Raises ImageError when the file does not decode."""
    if variant == NO_IMAGE:
        return None
    return variants.apply(images.open_rgb(row["image_path"]), variant)


def ask_image(
    backend: Backend, image, items: list[Item]
) -> tuple[list[tuple[AnswerKey, Answer]], list[str]]:
    """All pending questions about one image, in as few backend calls as their kinds allow.
    Returns the answers to store and the reasons of questions that got none (a server's
    failed request: never cached, so a rerun asks them again)."""
    stored, errors = [], []
    scored = [it for it in items if it.max_new_tokens is None]
    if scored:
        letters = [list(it.question.letters) for it in scored]
        results = answer_image(backend, image, [it.prompt for it in scored], letters)
        _collect(scored, results, stored, errors)
    for tokens in dict.fromkeys(it.max_new_tokens for it in items if it.max_new_tokens):
        group = [it for it in items if it.max_new_tokens == tokens]
        results = generate_image(backend, image, [it.prompt for it in group], tokens)
        _collect(group, results, stored, errors)
    return stored, errors


def _collect(items: list[Item], results, stored: list, errors: list[str]) -> None:
    """Each result as the Answer to store for its item, or its error."""
    for it, res in zip(items, results, strict=True):
        if res.error:
            errors.append(res.error)
        elif it.max_new_tokens is None:  # scored
            probs = res.probabilities or None
            choice = max(probs, key=probs.get) if probs else None
            top = max(res.logprobs, key=res.logprobs.get) if res.logprobs else ""
            answer = Answer(top, choice, probs, res.latency_s, res.visual_tokens, res.letter_mass)
            stored.append((it.key, answer))
        else:
            q, choice = it.question, None
            if q is not None:
                options = {
                    letter: (text, name)
                    for letter, text, name in zip(q.letters, q.option_texts, q.classes, strict=True)
                }
                choice = parse_choice(res.text, q.letters, options)
            stored.append(
                (it.key, Answer(res.text, choice, None, res.latency_s, res.visual_tokens))
            )


def _loaded(image_of, row):
    """The image for an in-flight backend, None when it does not decode (the scheduler skips
    it; image_of listed it in the failures)."""
    image = image_of(row)
    return None if image is False else image


def _answer_in_flight(backend, pending: dict[int, dict[str, Item]], image_of, store) -> None:
    """Every pending question of every image, the open one included, through a backend that
    keeps many images in flight (`answer_images`); each image committed as it finishes."""
    jobs, todo = [], {}
    for per_image in pending.values():
        items = list(per_image.values())
        asks = tuple(
            Ask(it.prompt, tuple(it.question.letters))
            if it.max_new_tokens is None
            else Ask(it.prompt, max_new_tokens=it.max_new_tokens)
            for it in items
        )
        job = ImageJob(
            items[0].key.image_sha256, lambda row=items[0].row: _loaded(image_of, row), asks
        )
        jobs.append(job)
        todo[id(job)] = items
    for job, results in backend.answer_images(jobs):
        if results is None:  # not decodable: image_of listed it in the failures
            continue
        stored, errors = [], []
        _collect(todo[id(job)], results, stored, errors)
        store(stored, errors, todo[id(job)][0].row)


DESCRIBE_BATCH = 8  # open-question generations batched across images (long outputs)
CHOICE, OPEN = "choice", "open"  # the kinds of task of the local path


def answer_task(backend: Backend, task: tuple[str, list[Item]], variant: str):
    """One task of `answer_by_image`'s local path: (CHOICE, one image's multiple-choice items)
    or (OPEN, a batch of open questions, one image each). Returns the answers to store and
    the failures (an image that does not decode is not asked)."""
    kind, items = task
    shown, failures = [], []
    for it in items[:1] if kind == CHOICE else items:
        try:
            shown.append((it, shown_image(it.row, variant)))
        except images.ImageError as exc:
            failures.append(failure(it.row, str(exc)))
    if not shown:
        return [], failures
    if kind == CHOICE:
        stored, errors = ask_image(backend, shown[0][1], items)
    else:
        requests = [VLMRequest(image, it.prompt) for it, image in shown]
        results = backend.generate(requests, max_new_tokens=items[0].max_new_tokens)
        pairs = list(zip(shown, results, strict=True))
        stored = [
            (it.key, Answer(res.text, None, None, res.latency_s, res.visual_tokens))
            for (it, _), res in pairs
            if not res.error
        ]
        errors = [res.error for _, res in pairs if res.error]
    if errors:
        failures.append(unanswered(shown[0][0].row, errors))
    return stored, failures


def answer_by_image(
    opened, items, cache, failures, variant: str = variants.ORIGINAL
) -> tuple[dict[str, Answer], set[str]]:
    """Cached answers read; the missing multiple-choice questions asked image by image
    (committed per image), then the open question in batches across images (its long
    generations batch well, and a random stand-in never stops before the token limit), each a
    task of `answer_task`. Each image is shown as its `variant` (None is sent for `NO_IMAGE`)."""
    check_backend_allows(opened.backend, variant)
    from tqdm.auto import tqdm

    found = cache.get_many([it.key for it in items])
    pending: dict[int, dict[str, Item]] = {}
    for it in items:
        if it.key.key not in found:  # the same question twice in one run is asked once
            pending.setdefault(int(it.row["micrograph_no"]), {}).setdefault(it.key.key, it)
    fresh: set[str] = set()
    todo_count = sum(len(todo) for todo in pending.values())
    bar = tqdm(
        total=todo_count,
        desc=f"{opened.label}: asking ({len(items) - todo_count} of {len(items)} cached)",
        unit="q",
        disable=todo_count == 0,
    )
    undecodable: set[int] = set()
    lock = threading.Lock()  # images may be decoded on a server backend's worker threads

    def image_of(row):
        """The variant of the decoded image (False: listed once in the failures, not asked)."""
        mno = int(row["micrograph_no"])
        if mno in undecodable:
            return False
        try:
            return shown_image(row, variant)
        except images.ImageError as exc:
            with lock:
                failures.append(failure(row, str(exc)))
                undecodable.add(mno)
            return False

    def found_now(stored):
        for key, answer in stored:
            found[key.key] = answer
            fresh.add(key.key)

    def store(stored, errors, row):
        if errors:
            failures.append(unanswered(row, errors))
        cache.put_many(stored)  # committed: a kill after this line loses nothing of it
        found_now(stored)
        bar.update(len(stored) + len(errors))

    if hasattr(opened.backend, "answer_images"):  # a server: many images in flight
        _answer_in_flight(opened.backend, pending, image_of, store)
        bar.close()
        return found, fresh
    # tasks: each image's multiple-choice questions, then the open question in batches across
    # images; this process answers from the front of the queue and, for a small model on a
    # CPU with cores to spare, worker processes (`copies`) from the back
    described = [it for todo in pending.values() for it in todo.values() if it.question is None]
    tasks = [
        (CHOICE, mine)
        for todo in pending.values()
        if (mine := [it for it in todo.values() if it.question is not None])
    ] + [
        (OPEN, described[i : i + DESCRIBE_BATCH]) for i in range(0, len(described), DESCRIBE_BATCH)
    ]
    helpers = copies.workers(opened, len(tasks), cache.path, variant, answer_task)
    queue = deque(tasks)

    def record(stored, failed, asked) -> None:
        listed = {f["micrograph_no"] for f in failures}
        failures.extend(f for f in failed if f["micrograph_no"] not in listed)  # once per image
        found_now(stored)
        bar.update(asked)

    with copies.one_thread(helpers is not None):
        while queue:
            for done in helpers.take_and_collect(queue) if helpers else ():
                record(*done)
            if queue:
                task = queue.popleft()
                stored, failed = answer_task(opened.backend, task, variant)
                cache.put_many(stored)  # committed: a kill after this line loses nothing of it
                record(stored, failed, len(task[1]))
        while helpers and helpers.running:
            for done in helpers.done(wait=True):
                record(*done)
    bar.close()
    return found, fresh
