"""sources.py: notebook 01's data-source logic (user -> existing -> scraped -> sample) and the
notebook itself."""

from __future__ import annotations

import json
import socket

import pytest
from urllib3.util.retry import Retry

from microqa import config, provenance
from microqa.data import doitpoms, sources
from microqa.data.mirror import MirrorServer
from microqa.run import Run
from tests import hostile_data
from tests.conftest import REPO, execute_notebook
from tests.scraper_helpers import make_mirror, run_cli, snapshot


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
    # A closed port is still retried as a user's run retries it, without the 1 s backoff sleep.
    monkeypatch.setattr(Retry, "_sleep_backoff", lambda self: None)
    return tmp_path


@pytest.fixture
def mirror(tmp_path):
    with MirrorServer(make_mirror(tmp_path / "mirror")) as server:
        yield server


def test_smoke_profile_scrapes_a_small_range_into_build_then_reuses_it(tree, mirror, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    choice = sources.resolve_dataset(Run.start("01", "smoke"), delay=0)
    assert choice.source == "scraped" and choice.complete
    assert choice.dataset_dir == config.build_dir() / "doitpoms-smoke"
    assert not config.scraped_dir().exists(), "a partial scrape never lands in data/doitpoms"
    assert mirror.count(r"id=40$") == 1 and mirror.count(r"id=41$") == 0
    assert (choice.n_records, choice.n_images) == (7, 7)
    data = provenance.Record.load().section("data")
    assert data["source"] == "scraped" and data["fallbacks"] == []
    assert data["dataset_dir"] == config.display_path(choice.dataset_dir) and data["n_images"] == 7
    # readers are told the public library the mirror serves; provenance keeps the mirror's address
    [row] = sources.summary_table(choice).to_dict("records")
    assert row["scraped_from"] == "https://www.doitpoms.ac.uk/miclib/"
    assert row["served_by"] == "local mirror"
    assert data["base_url"] == mirror.base_url and "127.0.0.1" in mirror.base_url

    asked = len(mirror.requests)
    again = sources.resolve_dataset(Run.start("01", "smoke"), delay=0)
    assert again.source == "existing" and len(mirror.requests) == asked
    assert (again.n_records, again.n_images) == (7, 7)


def test_full_profile_uses_a_complete_scrape_without_network(tree, mirror, monkeypatch):
    doitpoms.scrape(mirror.base_url, config.scraped_dir(), delay=0, missing_run=4)
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    choice = sources.resolve_dataset(Run.start("01", "full"))
    assert choice.source == "existing" and choice.base_url == mirror.base_url
    assert choice.dataset_dir == config.scraped_dir()
    assert provenance.Record.load().banner(["data"]).startswith("**Provenance:** real data")


def test_unreachable_site_falls_back_to_the_sample_loudly(tree, monkeypatch, caplog):
    url = closed_url()
    monkeypatch.setenv("DOITPOMS_URL", url)
    choice = sources.resolve_dataset(Run.start("01", "full"))
    assert choice.source == "sample" and choice.dataset_dir == config.sample_dir()
    assert (choice.n_records, choice.n_images) == (7, 7)
    assert "OFFLINE SUBSTITUTE" in caplog.text  # logged: a CLI prints it on stderr
    data = provenance.Record.load().section("data")
    assert data["source"] == "sample"
    [fallback] = data["fallbacks"]
    sample = config.display_path(config.sample_dir())
    assert f"embedded sample {sample} (7 images)" in fallback["what"]
    # the banner names the smaller side analyses the later notebooks run on the sample
    assert config.profile("full").sample_note() in fallback["what"]
    assert Run.start("04", "full").profile.vlm_agreement_n == 20
    assert url in fallback["reason"]
    assert "OFFLINE SUBSTITUTES IN USE" in provenance.Record.load().banner(["data"])
    assert Run.start("02", "full").data_labels == ["sample data"]  # stamped on later titles


def test_fallbacks_of_an_earlier_run_do_not_stick(tree, mirror, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    sources.resolve_dataset(Run.start("01", "smoke"))
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    assert sources.resolve_dataset(Run.start("01", "smoke"), delay=0).source == "scraped"
    assert provenance.Record.load().section("data")["fallbacks"] == []


def test_strict_mode_refuses_the_sample(tree, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="sample"):
        sources.resolve_dataset(Run.start("01", "full"))


def test_unreachable_site_and_no_sample_names_both(tree, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    monkeypatch.setenv("MICROQA_SAMPLE", str(tree / "no-sample-here"))
    with pytest.raises(doitpoms.ScrapeError, match="no embedded sample at .*no-sample-here"):
        sources.resolve_dataset(Run.start("01", "full"))


def test_partial_scrape_is_kept_when_the_site_goes_away(tree, mirror, monkeypatch):
    target = config.build_dir() / "doitpoms-smoke"
    doitpoms.scrape(mirror.base_url, target, ids="1-3", delay=0)
    data_files = lambda: {k: v for k, v in snapshot(target).items() if "complete" not in k}  # noqa: E731
    before = data_files()
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)
    mirror.stop()  # the site disappears mid-way through the smoke range
    choice = sources.resolve_dataset(Run.start("01", "smoke"), delay=0)
    assert choice.source == "sample" and "partial scrape" in choice.reason
    assert data_files() == before  # records, images and state all kept


def test_a_copy_placed_in_data_doitpoms_is_a_user_dataset_never_overwritten(
    tree, mirror, monkeypatch
):
    copy = hostile_data.only_required_columns(config.scraped_dir())
    before = snapshot(copy)
    monkeypatch.setenv("DOITPOMS_URL", mirror.base_url)  # reachable: still not scraped over
    choice = sources.resolve_dataset(Run.start("01", "full"), delay=0)
    assert choice.source == "user" and choice.dataset_dir == copy
    assert (choice.n_records, choice.n_images) == (3, 3)
    assert len(mirror.requests) == 0 and snapshot(copy) == before
    data = provenance.Record.load().section("data")
    assert data["source"] == "user" and data["fallbacks"] == []
    assert sources.summary_table(choice)["source"].iloc[0] == "user dataset"


def test_the_scraper_refuses_a_folder_it_did_not_create(tree, mirror):
    copy = hostile_data.only_required_columns(tree / "mine")
    before = snapshot(copy)
    with pytest.raises(doitpoms.ScrapeError, match="records.csv the scraper did not write"):
        doitpoms.scrape(mirror.base_url, copy, ids="1-3", delay=0)
    (tree / "other").mkdir()
    (tree / "other" / "notes.txt").write_text("mine")
    with pytest.raises(doitpoms.ScrapeError, match="not empty and was not created"):
        doitpoms.scrape(mirror.base_url, tree / "other", ids="1-3", delay=0)
    assert snapshot(copy) == before and len(mirror.requests) == 0
    assert (tree / "other" / "notes.txt").read_text() == "mine"


def test_the_scrape_cli_refuses_a_user_folder_in_one_line(tree, mirror):
    copy = hostile_data.only_required_columns(tree / "mine")
    done = run_cli("--base-url", mirror.base_url, "--out", str(copy), "--ids", "1-3")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "did not write" in line


def test_the_dataset_path_is_recorded_relative_to_the_repository(tree, monkeypatch):
    monkeypatch.setenv("DOITPOMS_URL", closed_url())
    monkeypatch.setenv("MICROQA_SAMPLE", str(REPO / "data" / "sample"))
    if not (REPO / "data" / "sample" / "records.csv").exists():
        pytest.skip("data/sample is not built")
    sources.resolve_dataset(Run.start("01", "full"))
    assert provenance.Record.load().section("data")["dataset_dir"] == "data/sample"


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


@pytest.mark.notebooks
def test_notebook_01_uses_a_user_folder_as_it_is(tmp_path):
    folder = tmp_path / "copied anywhere"
    hostile = hostile_data.build_hostile(folder)
    before = snapshot(folder)
    env = {
        "MICROQA_BUILD": str(tmp_path / "build"),
        "MICROQA_DATA": str(tmp_path / "data"),
        "MICROQA_TABLES": str(tmp_path / "tables"),
        "MICROQA_FIGURES": str(tmp_path / "figures"),
        "MICROQA_PROFILE": "full",  # the parameter below wins: the profile that ran is recorded
        "MICROQA_MAX_PIXELS": str(hostile_data.HUGE_LIMIT),
        "DOITPOMS_URL": closed_url(),
    }
    parameters = {"profile": "smoke", "dataset_dir": str(folder)}
    record = run_notebook_01(tmp_path, env, parameters)["data"]
    assert record["source"] == "user" and record["dataset_dir"] == str(folder)
    assert record["profile"] == "smoke" and record["fallbacks"] == []
    assert record["n_images"] == len(hostile.good) + len(hostile.bad)
    assert record["missing_images"] == 1 and record["orphan_images"] == 1
    assert snapshot(folder) == before
    assert not (tmp_path / "data" / "doitpoms").exists()
    table = (tmp_path / "tables" / "01_data_source.md").read_text(encoding="utf-8")
    assert "user dataset" in table and "SAMPLE DATA" not in table


def test_a_local_mirrors_addresses_are_named_as_the_public_site():
    text = "cannot reach http://127.0.0.1:9/miclib/: http://localhost:8765/robots.txt refused"
    assert doitpoms.public_urls(text) == (
        "cannot reach https://www.doitpoms.ac.uk/miclib/: "
        "https://www.doitpoms.ac.uk/robots.txt refused"
    )
    assert doitpoms.is_local_mirror("http://[::1]:8765/miclib/")
    assert not doitpoms.is_local_mirror("https://www.doitpoms.ac.uk/miclib/")
    assert doitpoms.public_urls("https://example.org/miclib/") == "https://example.org/miclib/"
