"""Copies of a small local model in worker processes, so that a CPU answers on every core.

A small model on a CPU answers one image at a time on one core: its forward passes are too
small for torch's threads to help (measured on the tiny stand-ins: one and two threads answer
equally fast). So where there are more cores, and memory for more copies, this process works
through the pending tasks (each image's multiple-choice questions, the open question's
batches) from the front of the queue while worker processes take them from the back, a few
at a time, each with its own copy of the model (loaded once per worker and kept for the next
call) and one torch thread, as this process then has too.

- A task is answered as the one-process path answers it (`asking.answer_task`): an image's
  questions in one call, the open question in the same batches (tested: the same answers).
- Each worker commits its answers to the shared answer cache image by image (SQLite in WAL
  mode takes one writer at a time), so a kill loses at most the images in flight.
- A GPU, a server backend, one usable core (`config.parallel_jobs`, MICROQA_JOBS) or a model
  too large for another copy in half the available memory: one process, as before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from microqa import config

# What `load_backend(backend, model, **options)` needs to open the same model in a worker:
# (backend, model or local folder, sorted option items). None: the model cannot be copied.
Recipe = tuple[str, str, tuple[tuple[str, Any], ...]]

_LOADED: dict[Recipe, Any] = {}  # a worker's copy of the model it last answered with
_POOL: dict[int, Any] = {}  # this process's workers, by their number (kept between calls)


def pool(n_workers: int):
    """The worker processes of the copies: their own pool, kept for the next call (a worker
    keeps its copy of the model), not joblib's shared one (`microqa.parallel` resizes that)."""
    from joblib.externals.loky import ProcessPoolExecutor

    if n_workers not in _POOL:
        for old in _POOL.values():
            old.shutdown(wait=False)
        _POOL.clear()
        _POOL[n_workers] = ProcessPoolExecutor(max_workers=n_workers)
    return _POOL[n_workers]


def recipe(backend: str, model: str, options: dict[str, Any]) -> Recipe:
    return backend, model, tuple(sorted((k, v) for k, v in options.items() if v is not None))


def available_memory() -> int:
    """Bytes of memory this process can still be given: Linux's MemAvailable, or less under a
    container's limit (cgroup v2 `memory.max` less `memory.current`); 0 when unknown (then
    one process answers)."""
    try:
        free = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return 0
    group = Path("/sys/fs/cgroup")
    try:
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the machine's figure
    return max(free, 0)


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def count(opened, n_tasks: int) -> int:
    """How many copies answer `n_tasks` tasks for `opened` (this process's included)."""
    backend = opened.backend
    if opened.recipe is None or getattr(backend, "device", "") != "cpu" or n_tasks < 2:
        return 1
    jobs = min(config.parallel_jobs(), n_tasks)
    if jobs < 2:
        return 1
    room = available_memory() // 2  # the rest for the data, the pages and everything else
    per_copy = 2 * max(model_bytes(backend.model), 1)  # weights, then activations and caches
    n = int(max(1, min(jobs, 1 + room // per_copy)))
    if n == 1:  # said, so a user who set MICROQA_JOBS knows why one core answers
        logging.getLogger(__name__).warning(
            "%s answers in one process: %d MB of free memory (half of what is available) "
            "leave no room for a copy of %d MB",
            opened.label,
            room >> 20,
            per_copy >> 20,
        )
    return n


@contextlib.contextmanager
def one_thread(active: bool) -> Iterator[None]:
    """torch on one thread while `active` (this process answers beside its workers)."""
    if not active:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Workers:
    """Worker processes answering tasks taken from the back of the queue this process works
    through from the front, a few tasks per call, so every copy stays busy to the end. Calls
    are handed out only as copies finish loading (one loading call per worker is submitted
    first; a fresh worker imports torch: seconds in which this process answers on)."""

    TASKS_PER_CALL = 2  # tasks (`asking.answer_task`) per call of a worker
    CALLS_AHEAD = 2  # per worker: the next call is ready when one finishes

    def __init__(self, opened, n_workers: int, cache_path: Path, variant: str, answer):
        self.executor = pool(n_workers)
        self.args = (opened.recipe, str(cache_path), variant, answer)
        self.loading = [self.executor.submit(_prepare, opened.recipe) for _ in range(n_workers)]
        self.running: dict[Future, int] = {}  # a worker's call -> the questions it asks

    def take(self, queue: deque) -> None:
        """Hand tasks from the back of `queue` (`asking.answer_task`'s) to the workers whose
        model is loaded."""
        loaded = [f for f in self.loading if f.done()]
        for future in loaded:
            future.result()  # a worker that could not load the model says why
        while len(self.running) < len(loaded) * self.CALLS_AHEAD and queue:
            tasks = [queue.pop() for _ in range(min(self.TASKS_PER_CALL, len(queue)))]
            future = self.executor.submit(_answer_share, tasks, *self.args)
            self.running[future] = sum(len(items) for _, items in tasks)

    def take_and_collect(self, queue: deque) -> list[tuple[list, list, int]]:
        """`take`, then what the workers have finished (`done`)."""
        self.take(queue)
        return self.done()

    def done(self, *, wait: bool = False) -> list[tuple[list, list, int]]:
        """(stored answers, failures, questions) of every finished call; `wait`: at least one."""
        if wait and self.running:
            concurrent.futures.wait(self.running, return_when=concurrent.futures.FIRST_COMPLETED)
        finished = [f for f in self.running if f.done()]
        return [(*f.result(), self.running.pop(f)) for f in finished]


def workers(opened, n_tasks: int, cache_path: Path, variant: str, answer) -> Workers | None:
    """Workers beside this process for `n_tasks` tasks, each answered by `answer(backend,
    task, variant)` (`asking.answer_task`); None: this process alone."""
    n = count(opened, n_tasks)
    return Workers(opened, n - 1, cache_path, variant, answer) if n > 1 else None


def _load(recipe: Recipe):
    """In a worker: its copy of the model of `recipe` (loaded on first use, one at a time)."""
    import torch

    from microqa.vlm.backends import load_backend

    torch.set_num_threads(1)
    if recipe not in _LOADED:
        _LOADED.clear()  # one model at a time, as in the main process
        name, model, options = recipe
        _LOADED[recipe] = load_backend(name, model, **dict(options))
    return _LOADED[recipe]


def _prepare(recipe: Recipe) -> None:
    """A worker's first task: load its copy (the copy stays in the worker)."""
    _load(recipe)


def _answer_share(tasks: list, recipe: Recipe, cache_path: str, variant: str, answer):
    """In a worker: each task answered (`answer`: `asking.answer_task`), its answers committed
    to the cache as it finishes. Returns (stored answers, failures)."""
    from microqa.vlm.cache import AnswerCache

    backend = _load(recipe)
    answered, failures = [], []
    with AnswerCache(cache_path) as cache:
        for task in tasks:
            stored, failed = answer(backend, task, variant)
            cache.put_many(stored)
            answered += stored
            failures += failed
    return answered, failures
