"""The whole study, full profile, scraped over HTTP from the local mirror of all 870 images.

Slow (about 3-4 minutes on 2 cores): run by `make test-slow`, which CI runs after `make test`.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from microqa.mirror import MirrorServer
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
    # the full profile asks 150 questions; the evaluation half of those is what every row shares
    assert table.groupby("task")["n"].nunique().eq(1).all()
    assert table["n"].between(50, 100).all()
    assert table["provenance"].str.contains("scraped").all()
    probe = table[table["kind"] == "clip_probe"]
    assert (probe["weights"] == "pretrained").all()
    # real reference features separate techniques far above chance (0.2), even on half the set
    assert probe.set_index("task").loc["technique", "balanced_accuracy"] > 0.5
