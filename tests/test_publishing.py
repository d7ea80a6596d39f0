"""publishing.py: the one decision on where a run's figures and tables go, repo-relative names,
and that a weaker result never replaces a published one; plots' savers follow it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from microqa import config, provenance, publishing
from microqa.report import plots


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository root in tmp with no folder overrides, as a user's checkout has."""
    root = tmp_path / "clone"
    (root / "figures").mkdir(parents=True)
    monkeypatch.setenv("MICROQA_ROOT", str(root))
    for name in ("MICROQA_BUILD", "MICROQA_FIGURES", "MICROQA_TABLES", "MICROQA_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(publishing.PUBLISH_ENV, raising=False)
    monkeypatch.setattr(publishing, "_run", {})
    return root


def _data_stage(**fields):
    provenance.record_stage("data", **fields)


def test_relative_names_paths_as_a_reader_knows_them(repo, tmp_path, monkeypatch):
    assert publishing.relative(repo / "figures" / "x.png") == "figures/x.png"
    assert publishing.relative(repo / "data" / "sample") == "data/sample"
    assert publishing.relative(repo / "lib" / "microqa") == "lib/microqa"
    assert publishing.relative(repo) == "."
    assert publishing.relative(tmp_path / "shared" / "doitpoms") == "../shared/doitpoms"
    assert publishing.relative("/somewhere/else/answers.csv") == "answers.csv"
    assert publishing.relative("figures/x.png") == "figures/x.png"
    moved = tmp_path / "elsewhere" / "build"
    monkeypatch.setenv("MICROQA_BUILD", str(moved))
    assert publishing.relative(moved / "vlm" / "answers.csv") == "build/vlm/answers.csv"


def test_only_make_reproduce_in_full_on_the_library_publishes(repo, monkeypatch):
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=True)
    publishing.begin("02_eda_class_imbalance", "full")
    interactive = publishing.destination()
    assert not interactive.published
    assert interactive.figures == repo / "build" / "runs" / "full-library-interactive" / "figures"
    assert "not run by `make reproduce`" in interactive.note()
    assert "/" + str(repo) not in interactive.note() and "build/runs/" in interactive.note()

    monkeypatch.setenv(publishing.PUBLISH_ENV, "1")
    published = publishing.destination()
    assert published.published and published.figures == repo / "figures"
    assert published.tables == repo / "tables"

    publishing.begin("02_eda_class_imbalance", "smoke")
    assert publishing.destination().reasons == ("smoke profile",)
    publishing.begin("02_eda_class_imbalance", "full")
    _data_stage(source="sample", dataset_dir="data/sample")
    sample = publishing.destination()
    assert sample.reasons == ("embedded sample data",)
    assert sample.figures == repo / "build" / "runs" / "full-sample" / "figures"
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=False)
    assert publishing.destination().reasons == ("partial scrape",)


def test_savers_write_where_the_decision_says_and_return_nothing(repo):
    _data_stage(source="sample", dataset_dir="data/sample")
    fig, _ = plt.subplots()
    assert plots.save_figure(fig, "demo") is None
    assert plots.save_table(pd.DataFrame({"a": [1]}), "demo", caption="c") is None
    run = repo / "build" / "runs" / "full-sample-interactive"
    assert (run / "figures" / "demo.png").exists()
    assert (run / "tables" / "demo.md").read_text().startswith("c\n")
    assert list((repo / "figures").iterdir()) == []  # the committed folder untouched


def test_an_explicit_folder_override_is_honoured(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_FIGURES", str(tmp_path / "smoke_figures"))
    assert publishing.destination().figures == tmp_path / "smoke_figures"


def test_a_weaker_result_never_replaces_a_published_one(repo, monkeypatch, capsys):
    monkeypatch.setenv(publishing.PUBLISH_ENV, "1")
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=True)
    plots.save_table(pd.DataFrame({"probe": ["reference"]}), "clip_probe")
    published = config.tables_dir() / "clip_probe.csv"
    assert "reference" in published.read_text()
    plots.save_table(
        pd.DataFrame({"probe": ["random"]}), "clip_probe", degraded="reference features absent"
    )
    assert "reference" in published.read_text()  # kept
    out = capsys.readouterr().out
    assert "kept the published tables/clip_probe.csv" in out and str(repo) not in out
    weaker = repo / "build" / "runs" / "full-library-degraded" / "tables" / "clip_probe.csv"
    assert "random" in weaker.read_text()
    # nothing published yet: the degraded result is written (it replaces nothing)
    plots.save_table(pd.DataFrame({"x": [1]}), "new_table", degraded="reference features absent")
    assert (config.tables_dir() / "new_table.csv").exists()
