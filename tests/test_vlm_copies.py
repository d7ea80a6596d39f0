"""vlm.copies: a small local model on a CPU answers with worker processes beside the main one,
each with its own copy of the model; the answers are the ones the main process alone gives."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pandas as pd
import torch

from microqa import parallel
from microqa.data import dataset
from microqa.vlm import copies, runner
from microqa.vlm.cache import AnswerCache
from tests.vlm_data import make_dataset


def _opened(device: str = "cpu", recipe=("hf", "tiny", ())):
    model = torch.nn.Linear(100, 100)  # 40,400 bytes of float32 weights
    backend = SimpleNamespace(device=device, model=model)
    return SimpleNamespace(label="tiny", recipe=recipe, backend=backend)


def test_copies_only_where_cores_and_memory_allow_them(monkeypatch, caplog):
    monkeypatch.setattr(copies, "available_memory", lambda: 10**9)
    monkeypatch.setenv("MICROQA_JOBS", "4")
    assert copies.count(_opened(), n_tasks=50) == 4
    assert copies.count(_opened(), n_tasks=3) == 3  # never more copies than tasks
    assert copies.count(_opened(), n_tasks=1) == 1
    assert copies.count(_opened(device="cuda:0"), n_tasks=50) == 1  # a GPU: one model
    assert copies.count(_opened(recipe=None), n_tasks=50) == 1  # a server: nothing to copy
    monkeypatch.setattr(copies, "available_memory", lambda: 4 * 2 * 40_400)
    assert copies.count(_opened(), n_tasks=50) == 3  # half the memory holds two more copies
    # (each counted twice its weights: activations and caches)
    assert not caplog.records
    monkeypatch.setattr(copies, "available_memory", lambda: 40_000)
    assert copies.count(_opened(), n_tasks=50) == 1  # no room for a second copy
    assert "tiny answers in one process" in caplog.text  # and it says so
    monkeypatch.setenv("MICROQA_JOBS", "1")
    monkeypatch.setattr(copies, "available_memory", lambda: 10**9)
    assert copies.count(_opened(), n_tasks=50) == 1


def test_workers_answer_as_the_main_process_alone_does(tmp_path, monkeypatch, tiny_dirs):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("STRICT", raising=False)
    records = dataset.load_records(make_dataset(tmp_path / "ds"))
    sample = runner.question_sample(records, "all").head(9)
    with open(sample["image_path"].iloc[4], "wb") as fh:
        fh.write(b"not an image")  # listed once, never asked, in either run
    settings = runner.RunSettings(
        mode="score", jobs=(("technique", "study"),), describe=True, describe_tokens=12
    )
    handed = []
    take = copies.Workers.take

    def counting_take(self, queue):
        before = len(queue)
        take(self, queue)
        handed.append(before - len(queue))

    monkeypatch.setattr(copies.Workers, "take", counting_take)
    torch.set_num_threads(1)  # what this process runs on beside its workers
    model = str(tiny_dirs["qwen3_vl"])
    # a fresh worker takes seconds to start (imports, its copy of the model), in which this
    # process alone would answer every task of so small a sample: start it first
    copies.pool(1).submit(copies._prepare, copies.recipe("hf", model, {})).result()
    results = {}
    for jobs in ("1", "2"):
        monkeypatch.setenv("MICROQA_JOBS", jobs)
        results[jobs] = runner.run_study(
            [model],
            backend="hf",
            sample=sample,
            settings=settings,
            cache_path=tmp_path / f"cache-{jobs}.sqlite",
            log=lambda *_: None,
        )
        if jobs == "1":
            assert not handed  # one process: no workers
    assert sum(handed) > 0  # the workers answered some of the tasks
    alone, beside = results["1"], results["2"]
    for frame in ("answers", "descriptions"):
        a, b = (getattr(r, frame).drop(columns="latency_s") for r in (alone, beside))
        key = [c for c in ("micrograph_no", "prompt_set", "rotation") if c in a]
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )
    broken = int(sample["micrograph_no"].iloc[4])
    assert [f["micrograph_no"] for f in beside.failures] == [broken]  # listed once
    assert broken not in set(beside.answers["micrograph_no"])
    assert len(beside.descriptions) == len(sample) - 1 and len(beside.answers) > 0
    # every answer, the workers' included, is in the cache: a rerun asks nothing
    with AnswerCache(tmp_path / "cache-2.sqlite") as cache:
        assert cache.count() == len(beside.answers) + len(beside.descriptions)
    # the copies' workers are their own pool: joblib's (`microqa.parallel`) still works beside
    assert parallel.run([functools.partial(int, "1"), functools.partial(int, "2")]) == [1, 2]
