"""A small VLM on a CPU: one process against worker copies beside it (`microqa.vlm.copies`).

The study's questions about the embedded sample's images, asked of a tiny stand-in (random
weights, the Qwen3-VL family) with a cold answer cache: once by this process alone
(MICROQA_JOBS=1), once with a copy of the model on every other usable core. The workers are
started and their copies loaded before the timed run, as they are after a notebook's first
model; the ratio is the answering itself. The answers must be the same (one torch thread
everywhere, so the same floats).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from microqa import config
from microqa.data import dataset
from microqa.vlm import copies, runner, tiny


def answer(model: str, sample, settings, cache: Path, jobs: int):
    os.environ["MICROQA_JOBS"] = str(jobs)
    start = time.perf_counter()
    result = runner.run_study(
        [model],
        backend="hf",
        sample=sample,
        settings=settings,
        cache_path=cache,
        log=lambda *_: None,
    )
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-images", type=int, default=30)
    parser.add_argument("--family", default="qwen3_vl", choices=tiny.FAMILIES)
    args, _ = parser.parse_known_args(argv)  # `make bench` passes every script the same flags
    cores = config.usable_cores()
    if cores < 2:
        print(f"one usable core: no copies to compare (MICROQA_JOBS, {cores} core)")
        return 0
    torch.set_num_threads(1)
    records = dataset.load_records(config.sample_dir())
    sample = runner.question_sample(records, "all").head(args.n_images)
    settings = runner.RunSettings(mode="score", describe=True, describe_tokens=32)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(tiny.build_tiny_vlm(args.family, Path(tmp) / args.family))
        workers = copies.pool(cores - 1)
        recipe = copies.recipe("hf", model, {})
        for loading in [workers.submit(copies._prepare, recipe) for _ in range(cores - 1)]:
            loading.result()
        alone, alone_s = answer(model, sample, settings, Path(tmp) / "alone.sqlite", 1)
        beside, beside_s = answer(model, sample, settings, Path(tmp) / "beside.sqlite", cores)
    asked = len(alone.answers) + len(alone.descriptions)
    same = alone.answers.drop(columns="latency_s").equals(
        beside.answers.drop(columns="latency_s")
    ) and list(alone.descriptions["raw_text"]) == list(beside.descriptions["raw_text"])
    print(f"tiny {args.family}, {len(sample)} sample images, {asked} questions (open included)")
    print(f"  one process:        {asked / alone_s:7.1f} questions/s ({alone_s:.1f} s)")
    print(f"  {cores - 1} more copies:    {asked / beside_s:7.1f} questions/s ({beside_s:.1f} s)")
    print(f"  ratio {alone_s / beside_s:.2f}x on {cores} cores; answers identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
