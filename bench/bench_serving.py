"""Throughput of the OpenAI-compatible backend against a server with a fixed latency.

A local HTTP server (127.0.0.1: `tests.openai_stub.OpenAIStub`) answers every chat request
after a fixed latency L, with unlimited capacity or at most C requests served at once (the rest
queue, as a saturated GPU server's would). The study's own path (`OpenAIBackend.answer_images`:
an image's questions to one replica, the first alone and the rest after it) asks Q questions
about each of many small images; reported: questions answered per L.

1. Against the in-flight window (`--concurrency` 1, 4, 16, 64), unlimited capacity.
   Target: 64 in flight >= 0.8 x 64 questions per L (before many images in flight: ~3.6).
2. One replica against four, each of capacity C = 16 (window 64 per replica).
   Target: four replicas >= 3.2 x one replica.

Ratios are measured in one run, so a slow machine moves both sides. Exit status 1 when a target
is missed. `--latency` sets L (default 0.5 s; a small L measures this machine's client more
than the protocol).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.openai_stub

from microqa.vlm.base import Ask, ImageJob  # noqa: E402
from microqa.vlm.openai_backend import OpenAIBackend  # noqa: E402
from tests.openai_stub import OpenAIStub  # noqa: E402

QUESTIONS_PER_IMAGE = 9  # the technique (5 rotations) and category (4) questions of the study
WINDOWS = (1, 4, 16, 64)
TARGET_WINDOW = 0.8  # x 64 questions per L at 64 in flight
TARGET_REPLICAS = 3.2  # x one replica, four replicas of capacity 16


def _jobs(n_images: int, seed: int) -> list[ImageJob]:
    jobs = []
    for i in range(n_images):
        image = Image.new("RGB", (32, 24), ((i * 37 + seed) % 256, i % 256, (i * 11) % 256))
        prompt = "Question {q} about image {i}: A) x B) y C) z\nAnswer with the letter only."
        asks = tuple(
            Ask(prompt.format(q=q, i=i), ("A", "B", "C")) for q in range(QUESTIONS_PER_IMAGE)
        )
        jobs.append(ImageJob(f"{seed}-{i}", lambda image=image: image, asks))
    return jobs


def questions_per_latency(
    n_replicas: int, window: int, capacity: int | None, latency: float, n_images: int, seed: int
) -> tuple[float, int]:
    """(questions per L, questions asked) for one configuration, on fresh servers."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(OpenAIStub(delay_s=latency, capacity=capacity, record_bodies=False))
            for _ in range(n_replicas)
        ]
        backend = OpenAIBackend(
            "stub-vlm",
            base_url=[s.base_url for s in servers],
            concurrency=window,
            retries=0,
            timeout=60 + 10 * latency,
        )
        jobs = _jobs(n_images, seed)
        start = time.perf_counter()
        results = [r for _, answers in backend.answer_images(jobs) for r in answers]
        elapsed = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} questions failed: {errors[0]}")
    answered = len(results)
    return answered / (elapsed / latency), answered


def images_for(rate_per_l: float, lengths: float) -> int:
    """Enough images for about `lengths` latencies of work at `rate_per_l` questions per L."""
    return max(4, int(rate_per_l * lengths / QUESTIONS_PER_IMAGE) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5, help="server latency L, seconds")
    parser.add_argument("--lengths", type=float, default=30, help="run each case ~this many L")
    args, _ = parser.parse_known_args(argv)
    latency = args.latency
    print(
        f"server: 127.0.0.1, latency L = {latency:g} s per request; "
        f"{QUESTIONS_PER_IMAGE} questions per image (the first alone, the rest after it)"
    )
    by_window = {}
    for window in WINDOWS:
        rate, n = questions_per_latency(
            1, window, None, latency, images_for(window, args.lengths), window
        )
        by_window[window] = rate
        print(f"  in flight {window:>3}: {rate:6.1f} questions per L  ({n} questions)")
    ok_window = by_window[64] >= TARGET_WINDOW * 64
    print(
        f"64 in flight: {by_window[64]:.1f} questions per L = {by_window[64] / 64:.2f} x 64 "
        f"(target >= {TARGET_WINDOW}) {'ok' if ok_window else 'MISSED'}"
    )
    one, n1 = questions_per_latency(1, 64, 16, latency, images_for(16, args.lengths), 101)
    four, n4 = questions_per_latency(4, 64, 16, latency, images_for(64, args.lengths), 102)
    ratio = four / one
    ok_replicas = ratio >= TARGET_REPLICAS
    print(f"  1 replica  of capacity 16: {one:6.1f} questions per L  ({n1} questions)")
    print(f"  4 replicas of capacity 16: {four:6.1f} questions per L  ({n4} questions)")
    print(
        f"4 replicas / 1 replica: {ratio:.2f} x (target >= {TARGET_REPLICAS}) "
        f"{'ok' if ok_replicas else 'MISSED'}"
    )
    return 0 if ok_window and ok_replicas else 1


if __name__ == "__main__":
    raise SystemExit(main())
