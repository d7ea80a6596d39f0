"""The whole study, full profile, scraped over HTTP from the local mirror of all 870 images.

Slow (about 20 minutes on 2 cores, caches cold): run by `make test-slow`, which CI runs after
`make test`.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from microqa.data.mirror import MirrorServer
from tests.conftest import MIRROR, NotebookPipeline, needs_mirror, needs_reference

pytestmark = [pytest.mark.slow, pytest.mark.notebooks, needs_mirror(), needs_reference()]


def test_full_study_on_the_mirror(tmp_path):
    with MirrorServer(MIRROR) as server:
        pipeline = NotebookPipeline(
            tmp_path,
            profile="full",
            site=server.base_url,
            parameters={"01_scrape_doitpoms": {"delay": 0}},
        )
        start = time.perf_counter()
        pipeline.run("05_comparison")
        print(f"full study on the mirror: {time.perf_counter() - start:.0f} s")
    record = json.loads((tmp_path / "build" / "provenance.json").read_text())
    assert record["data"]["source"] == "scraped"
    assert record["data"]["n_images"] == 870
    assert not any(f["what"].startswith("embedded sample") for f in record["data"]["fallbacks"])
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    table = table[table["subset"] == "all labelled"]
    assert table["provenance"].str.contains("scraped").all()
    # cross-fitted: every labelled image of a task is scored once, by every CLIP method and,
    # in the study's main mode, by every VLM (after relabelling the macroscopic photographs);
    # the blank-image baseline is asked on the robustness sample only, by design
    main = table[
        (
            table["kind"].isin(["clip_zero_shot", "clip_probe"])
            | (table["mode"].fillna("score") == "score")
        )
        & (table["variant"].fillna("original") == "original")
    ]
    assert (table["variant"] == "blank").any()  # the baseline is there, on its sample
    n = main.groupby("task")["n"].min()
    assert n["technique"] >= 820 and n["category"] >= 850, n
    probe = table[(table["kind"] == "clip_probe") & table["label"].str.contains("logistic")]
    assert (probe["weights"] == "pretrained").all()
    # real reference features separate techniques far above chance (0.2)
    assert probe.set_index("task").loc["technique", "balanced_accuracy"] > 0.6
