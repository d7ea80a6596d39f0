"""Many images in flight: the request scheduler of the OpenAI-compatible backend.

A server (vLLM, SGLang) batches hundreds of requests; one image at a time cannot feed it. This
keeps up to `window` requests in flight on EACH replica, across images, while keeping what a
prefix cache needs: an image's questions all go to one replica (`replicas.Replicas.route`), all
carry the same encoded image part, and the first question of an image is sent alone, the rest
only after it has returned (its prefix is then cached on that replica).

Order of work on a replica with a free slot: the remaining questions of images already started
(finishing them commits their answers and frees their pixels), then the next image. An image is
loaded and encoded by the worker that sends its first question, so only started images are in
memory: at most `window` per replica (a new image starts only when no started image has
questions waiting, and then it joins the at most `window` images with a request in flight).

Each finished image is yielded with its results in question order, so the caller can commit it
at once; a kill loses only the images in flight. A request whose replica failed (connection
error, 5xx after the client's retries) takes that replica out while others remain and is sent
again on the image's new replica; with one replica left its failure is the question's error.

Cost per question (`latency_s`): wall time shared among the requests in flight, so the costs
sum to the time the server was busy with this run (`CostClock`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from PIL import Image

from microqa.vlm.base import Ask, ImageJob
from microqa.vlm.replicas import Replicas

# send(replica_url, image_part, ask) -> (result with .error and .latency_s, replica failure or "")
Send = Callable[[str, str, Ask], tuple[Any, str]]
UNDECODABLE = object()


class CostClock:
    """Wall time shared equally among the requests in flight: a request's cost is the integral
    of 1/(requests in flight) over its lifetime; the costs of all requests sum to busy time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared = 0.0  # integral of 1/n dt so far
        self._n = 0
        self._t = time.perf_counter()

    def _advance(self) -> None:
        now = time.perf_counter()
        if self._n:
            self._shared += (now - self._t) / self._n
        self._t = now

    def enter(self) -> float:
        with self._lock:
            self._advance()
            self._n += 1
            return self._shared

    def leave(self, entered: float) -> float:
        with self._lock:
            self._advance()
            self._n -= 1
            return self._shared - entered


class _Open:
    """One image being answered."""

    def __init__(self, job: ImageJob, replica: str):
        self.job = job
        self.replica = replica
        self.url: str | None = None  # the encoded image part, once its first question is sent
        self.results: list[Any] = [None] * len(job.asks)
        self.queue: deque[int] = deque()  # questions ready to send (after the first returned)
        self.started = False
        self.in_ready = False
        self.left = len(job.asks)


class InFlight:
    """One run of `answer` over a sequence of image jobs (see the module's docstring)."""

    def __init__(
        self,
        replicas: Replicas,
        *,
        window: int,
        encode: Callable[[Image.Image], str],
        send: Send,
        lookahead: int = 4,
    ):
        self.replicas = replicas
        self.window = max(1, int(window))
        self.encode = encode
        self.send = send
        self.lookahead = lookahead  # images routed ahead (not loaded), so no replica waits
        self.clock = CostClock()
        self.max_in_flight = 0
        self.max_encoded = 0  # most images held encoded at once (the memory bound)
        self.rerouted = 0  # requests sent again after their replica was taken out

    # --- work done on the pool's threads ---------------------------------------------------
    def _work(self, img: _Open, index: int, replica: str):
        entered = self.clock.enter()
        try:
            if img.url is None:
                image = img.job.load()
                if image is None:
                    return UNDECODABLE
                img.url = self.encode(image)
            result, replica_failure = self.send(replica, img.url, img.job.asks[index])
        finally:
            cost = self.clock.leave(entered)
        result.latency_s = cost
        return result, replica_failure

    # --- the scheduler (the caller's thread) -----------------------------------------------
    def answer(self, jobs: Sequence[ImageJob]) -> Iterator[tuple[ImageJob, list | None]]:
        """Yields (job, results aligned with job.asks) as images finish; results is None when
        the image could not be loaded."""
        waiting: dict[str, deque[_Open]] = {}  # routed, not started
        ready: dict[str, deque[_Open]] = {}  # started, with questions waiting to be sent
        started: set[_Open] = set()
        in_flight: Counter[str] = Counter()
        futures: dict[Future, tuple[_Open, int, str]] = {}
        pending = deque(job for job in jobs if job.asks)
        n_open = 0
        pool = ThreadPoolExecutor(max_workers=self.window * len(self.replicas.urls))

        def submit(img: _Open, index: int) -> None:
            img.started = True
            started.add(img)
            futures[pool.submit(self._work, img, index, img.replica)] = (img, index, img.replica)
            in_flight[img.replica] += 1
            self.max_in_flight = max(self.max_in_flight, sum(in_flight.values()))

        def make_ready(img: _Open) -> None:
            if img.queue and not img.in_ready:
                img.in_ready = True
                ready.setdefault(img.replica, deque()).append(img)

        def fill() -> None:
            for replica in self.replicas.live:
                queue, fresh = ready.setdefault(replica, deque()), waiting.get(replica)
                while in_flight[replica] < self.window:
                    if queue:
                        img = queue[0]
                        submit(img, img.queue.popleft())
                        if not img.queue:
                            queue.popleft()
                            img.in_ready = False
                    elif fresh:
                        img = fresh.popleft()
                        submit(img, 0)  # the first question alone: it warms the prefix cache
                    else:
                        break

        def reroute(dead: str) -> None:
            for img in waiting.pop(dead, deque()):
                img.replica = self.replicas.route(img.job.key)
                waiting.setdefault(img.replica, deque()).append(img)
            ready.pop(dead, None)
            for img in started:
                if img.replica == dead:
                    img.replica = self.replicas.route(img.job.key)
                    img.in_ready = False
                    make_ready(img)

        try:
            while pending or n_open:
                limit = self.window * len(self.replicas.live) + self.lookahead
                while pending and n_open < limit:
                    job = pending.popleft()
                    img = _Open(job, self.replicas.route(job.key))
                    waiting.setdefault(img.replica, deque()).append(img)
                    n_open += 1
                fill()
                self.max_encoded = max(
                    self.max_encoded, sum(img.url is not None for img in started)
                )
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for future in done:
                    img, index, replica = futures.pop(future)
                    in_flight[replica] -= 1
                    outcome = future.result()  # a refusal (4xx) raises here, as it should
                    if outcome is UNDECODABLE:
                        started.discard(img)
                        n_open -= 1
                        yield img.job, None
                        continue
                    result, replica_failure = outcome
                    if replica_failure and self.replicas.take_out(replica, replica_failure):
                        reroute(replica)
                    if replica_failure and replica not in self.replicas.live:
                        # taken out (now or earlier): ask again on the image's new replica
                        self.rerouted += 1
                        if index == 0:  # still the image's first question, on its new replica
                            waiting.setdefault(img.replica, deque()).appendleft(img)
                        else:
                            img.queue.append(index)
                            make_ready(img)
                        continue
                    img.results[index] = result
                    img.left -= 1
                    if index == 0:
                        img.queue.extend(range(1, len(img.job.asks)))
                        make_ready(img)
                    if img.left == 0:
                        started.discard(img)
                        img.url = None  # the pixels go with it
                        n_open -= 1
                        yield img.job, img.results
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
