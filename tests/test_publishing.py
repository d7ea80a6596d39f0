"""publishing.py: the one decision on where a run's figures and tables go, repo-relative names,
and that a weaker result never replaces a published one; plots' savers follow it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from microqa import config, provenance, publishing
from microqa.report import plots
from microqa.run import Run


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository root in tmp with no folder overrides, as a user's checkout has."""
    root = tmp_path / "clone"
    (root / "figures").mkdir(parents=True)
    monkeypatch.setenv("MICROQA_ROOT", str(root))
    for name in ("MICROQA_BUILD", "MICROQA_FIGURES", "MICROQA_TABLES", "MICROQA_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(publishing.PUBLISH_ENV, raising=False)
    return root


def _data_stage(**fields):
    provenance.Record.load().record_stage("data", **fields)


def _run(profile: str = "full") -> Run:
    """A notebook's run, started after the data stage was recorded (as notebooks 02-05 are)."""
    return Run.start("02_eda_class_imbalance", profile)


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
    interactive = _run().destination
    assert not interactive.published
    assert interactive.figures == repo / "build" / "runs" / "full-library-interactive" / "figures"
    assert "not run by `make reproduce`" in interactive.note()
    assert "/" + str(repo) not in interactive.note() and "build/runs/" in interactive.note()

    monkeypatch.setenv(publishing.PUBLISH_ENV, "1")
    published = _run().destination
    assert published.published and published.figures == repo / "figures"
    assert published.tables == repo / "tables"

    assert _run("smoke").destination.reasons == ("smoke profile",)
    _data_stage(source="sample", dataset_dir="data/sample")
    sample = _run().destination
    assert sample.reasons == ("embedded sample data",)
    assert sample.figures == repo / "build" / "runs" / "full-sample" / "figures"
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=False)
    assert _run().destination.reasons == ("partial scrape",)


def test_savers_write_where_the_decision_says_and_return_nothing(repo):
    _data_stage(source="sample", dataset_dir="data/sample")
    fig, _ = plt.subplots()
    run = _run()
    assert plots.save_figure(run, fig, "demo") is None
    table = pd.DataFrame({"a": [1]})
    assert plots.save_table(run, table, "demo", "c", labels=["sample data"]) is None
    folder = repo / "build" / "runs" / "full-sample-interactive"
    assert (folder / "figures" / "demo.png").exists()
    assert (folder / "tables" / "demo.md").read_text().startswith("c [SAMPLE DATA]\n")
    assert list((repo / "figures").iterdir()) == []  # the committed folder untouched


def _panels(title: str):
    """A wall of panels as notebook 05 draws them: constrained layout, legends, a title."""
    fig, axes = plt.subplots(2, 3, figsize=(9, 5), layout="constrained")
    for k, ax in enumerate(axes.flat):
        ax.plot([0, 1, 2], [k, k + 1, k * k], "o-", label="before")
        ax.set_title(f"method {k}: a long label of the method")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def test_figures_drawn_in_worker_processes_are_the_bytes_drawn_here(repo, monkeypatch):
    _data_stage(source="sample", dataset_dir="data/sample")
    plots.set_style()
    run = _run()
    folder = repo / "build" / "runs" / "full-sample-interactive" / "figures"
    plots.save_figure(run, _panels("one"), "here_one")
    plots.save_figure(run, _panels("two"), "here_two")
    monkeypatch.setenv("MICROQA_JOBS", "2")
    plots.save_figures(run, [("there_one", _panels("one")), ("there_two", _panels("two"))])
    for name in ("one", "two"):
        here, there = (folder / f"{where}_{name}.png" for where in ("here", "there"))
        assert here.read_bytes() == there.read_bytes()
    assert plt.get_fignums() == []  # every figure closed


def test_an_explicit_folder_override_is_honoured(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_FIGURES", str(tmp_path / "smoke_figures"))
    assert _run().destination.figures == tmp_path / "smoke_figures"


def test_a_weaker_result_never_replaces_a_published_one(repo, monkeypatch, capsys):
    monkeypatch.setenv(publishing.PUBLISH_ENV, "1")
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=True)
    run = _run()
    plots.save_table(run, pd.DataFrame({"probe": ["reference"]}), "clip_probe")
    published = config.tables_dir() / "clip_probe.csv"
    assert "reference" in published.read_text()
    weaker = pd.DataFrame({"probe": ["random"]})
    plots.save_table(run, weaker, "clip_probe", degraded="reference features absent")
    assert "reference" in published.read_text()  # kept
    out = capsys.readouterr().out
    assert "kept the published tables/clip_probe.csv" in out and str(repo) not in out
    kept = repo / "build" / "runs" / "full-library-degraded" / "tables" / "clip_probe.csv"
    assert "random" in kept.read_text()
    # nothing published yet: the degraded result is written (it replaces nothing)
    new = pd.DataFrame({"x": [1]})
    plots.save_table(run, new, "new_table", degraded="reference features absent")
    assert (config.tables_dir() / "new_table.csv").exists()


def test_two_variant_runs_keep_both_results(repo):
    """A run whose parameters change the profile writes to its own folder, named after a hash
    of what it changed; the same variant again reuses its folder; the plain run keeps its own."""
    _data_stage(source="scraped", dataset_dir="data/doitpoms", complete=True)
    plain = _run()
    one = Run.start("03_clip_zero_shot", "full", clip_models='["ViT-B-32:openai"]')
    two = Run.start("03_clip_zero_shot", "full", clip_models=["RN50:openai"])
    again = Run.start("03_clip_zero_shot", "full", clip_models=["ViT-B-32:openai"])
    for run, value in [(plain, "plain"), (one, "one"), (two, "two")]:
        plots.save_table(run, pd.DataFrame({"run": [value]}), "clip_zero_shot")
    folders = {run.destination.tables for run in (plain, one, two)}
    assert len(folders) == 3 and again.destination.tables == one.destination.tables
    assert plain.destination.tables == repo / "build/runs/full-library-interactive/tables"
    assert one.destination.run_name == f"full-library-interactive-{one.variant}"
    for run, value in [(plain, "plain"), (one, "one"), (two, "two")]:
        assert value in (run.destination.tables / "clip_zero_shot.csv").read_text()
    assert "parameters changed" in one.destination.note()
