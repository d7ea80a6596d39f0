"""sources.py: notebook 01's data-source logic (user -> existing -> scraped -> sample) and the
notebook itself."""

from __future__ import annotations

import json
import socket

import pytest

from microqa import config, doitpoms, provenance, sources
from microqa.mirror import MirrorServer
from tests.conftest import REPO, execute_notebook
from tests.scraper_helpers import make_mirror, snapshot


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/miclib/"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A private build/data tree and a tiny sample; the profile and URL are set per test."""
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MICROQA_SAMPLE", str(make_mirror(tmp_path / "sample")))
    monkeypatch.delenv("STRICT", raising=False)
    return tmp_path


@pytest.fixture
def mirror(tmp_path):
    with MirrorServer(make_mirror(tmp_path / "mirror")) as server:
        yield server


def test_smoke_profile_scrapes_a_small_range_into_build_then_reuses_it(tree, mirror, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    choice = sources.resolve_dataset("smoke", delay=0)
    assert choice.source == "scraped" and choice.complete
    assert choice.dataset_dir == config.build_dir() / "doitpoms-smoke"
    assert not config.scraped_dir().exists(), "a partial scrape never lands in data/doitpoms"
    assert mirror.count(r"id=40$") == 1 and mirror.count(r"id=41$") == 0
    assert (choice.n_records, choice.n_images) == (7, 7)
    data = provenance.load()["data"]
    assert data["source"] == "scraped" and data["fallbacks"] == []
    assert data["dataset_dir"] == config.display_path(choice.dataset_dir) and data["n_images"] == 7

    asked = len(mirror.requests)
    again = sources.resolve_dataset("smoke", delay=0)
    assert again.source == "existing" and len(mirror.requests) == asked
    assert (again.n_records, again.n_images) == (7, 7)


def test_full_profile_uses_a_complete_scrape_without_network(tree, mirror, monkeypatch):
    doitpoms.scrape(mirror.base_url, config.scraped_dir(), delay=0, missing_run=4)
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    choice = sources.resolve_dataset("full")
    assert choice.source == "existing" and choice.base_url == mirror.base_url
    assert choice.dataset_dir == config.scraped_dir()
    assert provenance.banner(["data"]).startswith("**Provenance:** real data")


def test_unreachable_site_falls_back_to_the_sample_loudly(tree, monkeypatch, capsys):
    url = closed_url()
    monkeypatch.setenv("DOITPOMS_URL", url)
    choice = sources.resolve_dataset("full")
    assert choice.source == "sample" and choice.dataset_dir == config.sample_dir()
    assert (choice.n_records, choice.n_images) == (7, 7)
    assert "OFFLINE SUBSTITUTE" in capsys.readouterr().err
    data = provenance.load()["data"]
    assert data["source"] == "sample"
    [fallback] = data["fallbacks"]
    sample = config.display_path(config.sample_dir())
    assert f"embedded sample {sample} (7 images)" in fallback["what"]
    assert url in fallback["reason"]
    assert "OFFLINE SUBSTITUTES IN USE" in provenance.banner(["data"])
    assert "[SAMPLE DATA]" in sources.summary_caption(choice)


def test_fallbacks_of_an_earlier_run_do_not_stick(tree, mirror, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    sources.resolve_dataset("smoke")
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    assert sources.resolve_dataset("smoke", delay=0).source == "scraped"
    assert provenance.load()["data"]["fallbacks"] == []


def test_strict_mode_refuses_the_sample(tree, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="sample"):
        sources.resolve_dataset("full")


def test_unreachable_site_and_no_sample_names_both(tree, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    monkeypatch.setenv("MICROQA_SAMPLE", str(tree / "no-sample-here"))
    with pytest.raises(doitpoms.ScrapeError, match="no embedded sample at .*no-sample-here"):
        sources.resolve_dataset("full")


def test_partial_scrape_is_kept_when_the_site_goes_away(tree, mirror, monkeypatch):
    target = config.build_dir() / "doitpoms-smoke"
    doitpoms.scrape(mirror.base_url, target, ids="1-3", delay=0)
    data_files = lambda: {k: v for k, v in snapshot(target).items() if "complete" not in k}  # noqa: E731
    before = data_files()
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    mirror.stop()  # the site disappears mid-way through the smoke range
    choice = sources.resolve_dataset("smoke", delay=0)
    assert choice.source == "sample" and "partial scrape" in choice.reason
    assert data_files() == before  # records, images and state all kept


# ----------------------------------------------------------------------------- notebook 01


def run_notebook_01(tmp_path, env: dict[str, str], parameters: dict) -> dict:
    execute_notebook("01_scrape_doitpoms", tmp_path / "01.ipynb", env=env, parameters=parameters)
    return json.loads((tmp_path / "build" / "provenance.json").read_text(encoding="utf-8"))


@pytest.mark.notebooks
def test_notebook_01_scrapes_the_mirror(tmp_path, mirror):
    env = {
        "MICROQA_BUILD": str(tmp_path / "build"),
        "MICROQA_DATA": str(tmp_path / "data"),
        "MICROQA_TABLES": str(tmp_path / "tables"),
        "MICROQA_FIGURES": str(tmp_path / "figures"),
        "MICROQA_PROFILE": "smoke",
        "DOITPOMS_URL": mirror.base_url,
    }
    record = run_notebook_01(tmp_path, env, {"profile": "smoke", "delay": 0.0})
    assert record["data"]["source"] == "scraped" and record["data"]["n_images"] == 7
    assert record["data"]["dataset_dir"] == str(tmp_path / "build" / "doitpoms-smoke")
    table = (tmp_path / "tables" / "01_data_source.md").read_text(encoding="utf-8")
    assert "scraped" in table and "SAMPLE DATA" not in table


@pytest.mark.notebooks
@pytest.mark.skipif(
    not (REPO / "data" / "sample" / "records.csv").exists(),
    reason="data/sample is not built yet (make sample)",
)
def test_notebook_01_in_the_smoke_pipeline_falls_back_to_the_sample(smoke_pipeline):
    smoke_pipeline.run("01_scrape_doitpoms")
    record = json.loads((smoke_pipeline.root / "build" / "provenance.json").read_text("utf-8"))
    assert record["data"]["source"] == "sample"
    assert record["data"]["fallbacks"], "the substitute is declared"
    table = (smoke_pipeline.root / "tables" / "01_data_source.md").read_text(encoding="utf-8")
    assert "[SAMPLE DATA]" in table
