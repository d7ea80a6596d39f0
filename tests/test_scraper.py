"""The scraper against the local mirror server over real HTTP: discovery, files, politeness,
faults, persistent failures, resume, the CLI's bad-input answers, and the real mirror."""

from __future__ import annotations

import csv
import hashlib
import socket
import subprocess
import sys

import pytest
from PIL import Image

from microqa import config
from microqa.data import doitpoms
from microqa.data.mirror import Faults, MirrorServer
from tests.conftest import MIRROR, REPO, needs_mirror
from tests.scraper_helpers import (
    TINY_LAYOUT,
    TINY_MISSING_RUN,
    cli_env,
    make_mirror,
    read_rows,
    record_row,
    run_cli,
    snapshot,
)

FAST = {"delay": 0.0, "backoff": 0.01, "timeout": 5.0}  # test speed; defaults are polite
TINY_RECORDS = [i for i, image in sorted(TINY_LAYOUT.items()) if image is not None]


@pytest.fixture
def tiny_mirror(tmp_path):
    return make_mirror(tmp_path / "mirror")


@pytest.fixture
def server(tiny_mirror):
    with MirrorServer(tiny_mirror) as running:
        yield running


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_rows_match_mirror(rows, mirror_dir, base_url):
    mirror = {r["micrograph_no"]: r for r in read_rows(mirror_dir / "records.csv")}
    for row in rows:
        expected = mirror[row["micrograph_no"]]
        for column in doitpoms.FIELD_COLUMNS:
            wanted = doitpoms.normalise_text(expected[column])
            assert row[column] == wanted, (row["micrograph_no"], column)
        assert row["page_url"] == expected["page_url"].replace(
            "https://www.doitpoms.ac.uk/miclib/", base_url
        )
        assert row["image_url"] == expected["image_url"].replace(
            "https://www.doitpoms.ac.uk/miclib/", base_url
        )


def test_discovery_reproduces_the_mirror(server, tiny_mirror, tmp_path):
    out = tmp_path / "out"
    result = doitpoms.scrape(server.base_url, out, missing_run=TINY_MISSING_RUN, **FAST)
    assert result.complete and not result.failures
    assert (result.n_records, result.n_images) == (len(TINY_RECORDS), len(TINY_RECORDS))
    # Discovery probed past the last record (12) exactly `missing_run` ids, then stopped.
    assert result.last_id == 12 + TINY_MISSING_RUN
    assert server.count(rf"id={12 + TINY_MISSING_RUN}$") == 1
    assert server.count(rf"id={12 + TINY_MISSING_RUN + 1}$") == 0
    assert result.n_missing == result.last_id - len(TINY_RECORDS)

    with open(out / "records.csv", encoding="utf-8", newline="") as fh:
        assert next(csv.reader(fh)) == doitpoms.RECORD_COLUMNS + doitpoms.IMAGE_COLUMNS
    rows = read_rows(out / "records.csv")
    assert [int(r["micrograph_no"]) for r in rows] == TINY_RECORDS  # missing ids are not rows
    assert_rows_match_mirror(rows, tiny_mirror, server.base_url)
    extensions = {"JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "PNG": "png"}
    for row in rows:
        record_id = int(row["micrograph_no"])
        fmt = TINY_LAYOUT[record_id][0]
        with Image.open(tiny_mirror / "images" / f"{record_id:06d}.jpg") as original:
            mode = original.mode  # (Pillow reads a greyscale GIF back as P)
        assert row["image_file"] == f"images/{record_id:06d}.{extensions[fmt]}"
        saved = (out / row["image_file"]).read_bytes()
        assert saved == (tiny_mirror / "images" / f"{record_id:06d}.jpg").read_bytes()
        assert row["image_sha256"] == hashlib.sha256(saved).hexdigest()
        assert (row["image_format"], row["image_mode"]) == (fmt, mode)
        assert (row["image_width"], row["image_height"]) == ("48", "36")
        assert row["image_error"] == ""
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        r["image_file"].split("/")[1] for r in rows
    )
    assert doitpoms.completion(out)["n_records"] == len(TINY_RECORDS)


def test_rerun_of_a_finished_scrape_makes_no_request_and_changes_nothing(server, tmp_path):
    out = tmp_path / "out"
    doitpoms.scrape(server.base_url, out, missing_run=TINY_MISSING_RUN, **FAST)
    before, asked = snapshot(out), len(server.requests)
    again = doitpoms.scrape(server.base_url, out, missing_run=TINY_MISSING_RUN, **FAST)
    assert again.requests_made == 0 and len(server.requests) == asked
    assert again.complete and again.n_records == len(TINY_RECORDS)
    assert snapshot(out) == before


def test_politeness_user_agent_robots_first_and_delay(server, tmp_path):
    delay = 0.15
    doitpoms.scrape(server.base_url, tmp_path / "out", ids="1-2", delay=delay, backoff=0.01)
    paths = [path for _, path, _, _ in server.requests]
    assert paths[0] == "/robots.txt" and paths.count("/robots.txt") == 1
    assert {agent for *_, agent in server.requests} == {config.USER_AGENT}
    times = [t for t, path, _, _ in server.requests if path != "/robots.txt"]
    assert len(times) == 4  # two pages, two images
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= delay * 0.9, gaps


def test_robots_txt_disallowing_images_keeps_records_and_fails_loudly(tiny_mirror, tmp_path):
    robots = "User-agent: *\nDisallow: /miclib/micrographs/\n"
    with MirrorServer(tiny_mirror, robots=robots) as server:
        result = doitpoms.scrape(server.base_url, tmp_path / "out", ids="1-3", **FAST)
        assert server.count("micrographs") == 0
    assert not result.complete
    assert [(f.id, f.what) for f in result.failures] == [(1, "image"), (2, "image"), (3, "image")]
    rows = read_rows(tmp_path / "out" / "records.csv")
    assert [r["micrograph_no"] for r in rows] == ["1", "2", "3"]
    assert all("robots.txt" in r["image_error"] and r["image_file"] == "" for r in rows)


def test_robots_txt_disallowing_our_agent_fetches_nothing(tiny_mirror, tmp_path):
    robots = "User-agent: microqa\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
    with MirrorServer(tiny_mirror, robots=robots) as server:
        result = doitpoms.scrape(server.base_url, tmp_path / "out", ids="1-3", **FAST)
        assert [path for _, path, _, _ in server.requests] == ["/robots.txt"]
    assert [f.what for f in result.failures] == ["page"] * 3
    assert all("robots.txt" in f.reason for f in result.failures)


def test_injected_faults_still_end_with_the_clean_result(tiny_mirror, tmp_path):
    with MirrorServer(tiny_mirror) as clean_server:
        clean = doitpoms.scrape(clean_server.base_url, tmp_path / "clean", ids="1-12", **FAST)
        clean_requests = len(clean_server.requests)
    faults = Faults(
        seed=3,
        error_rate=0.3,
        truncate_rate=0.3,
        malformed_rate=0.5,
        wrong_type_rate=0.3,
        slow_rate=0.3,
        slow_seconds=1.0,
        max_faults=2,
    )
    with MirrorServer(tiny_mirror, faults=faults) as server:
        result = doitpoms.scrape(
            server.base_url,
            tmp_path / "faulty",
            ids="1-12",
            delay=0,
            backoff=0.01,
            timeout=0.5,
            retries=3,
        )
        statuses = [status for _, _, status, _ in server.requests]
        fired = dict(server.fired)
    assert result.complete, [str(f) for f in result.failures]
    assert set(fired) == {"error", "truncate", "malformed", "type", "slow"}, fired
    assert {500, 503} & set(statuses)
    assert len(statuses) > clean_requests, "faults cost extra requests"

    def without_urls(rows):
        return [{k: v for k, v in r.items() if not k.endswith("_url")} for r in rows]

    assert without_urls(read_rows(tmp_path / "faulty" / "records.csv")) == without_urls(
        read_rows(tmp_path / "clean" / "records.csv")
    )
    images = lambda root: {k: v for k, v in snapshot(root).items() if k.startswith("images/")}  # noqa: E731
    assert images(tmp_path / "faulty") == images(tmp_path / "clean")
    assert clean.n_records == result.n_records


def test_persistent_failures_are_listed_kept_and_retried_on_rerun(tiny_mirror, tmp_path):
    faults = Faults(fail_ids={3}, corrupt_ids={7})
    with MirrorServer(tiny_mirror, faults=faults) as server:
        out = tmp_path / "out"
        result = doitpoms.scrape(server.base_url, out, ids="1-8", retries=1, **FAST)
        assert sorted((f.id, f.what) for f in result.failures) == [(3, "page"), (7, "image")]
        assert not result.complete and doitpoms.completion(out) is None
        rows = {r["micrograph_no"]: r for r in read_rows(out / "records.csv")}
        assert "3" not in rows  # the page failed: nothing to keep yet
        assert rows["7"]["image_file"] == "" and "cannot decode" in rows["7"]["image_error"]
        assert rows["7"]["brief_description"] == record_row(7)["brief_description"]
        assert not list((out / "images").glob("000007.*"))

        faults.fail_ids.clear()
        faults.corrupt_ids.clear()  # the site is fixed; the same command resumes
        again = doitpoms.scrape(server.base_url, out, ids="1-8", retries=1, **FAST)
        assert again.complete
        assert server.count(r"id=1$") == 1, "records already saved are not fetched again"
        reference = doitpoms.scrape(server.base_url, tmp_path / "ref", ids="1-8", **FAST)
    assert reference.complete
    assert snapshot(out) == snapshot(tmp_path / "ref")


def test_redirects_are_followed_on_the_host_only(tiny_mirror, tmp_path):
    redirects = {
        "/miclib/micrograph_record.php?id=1": "/miclib/full_record.php?id=1",
        "/miclib/micrograph_record.php?id=2": "http://elsewhere.invalid/miclib/record?id=2",
    }
    with MirrorServer(tiny_mirror, redirects=redirects) as server:
        result = doitpoms.scrape(server.base_url, tmp_path / "out", ids="1-2", **FAST)
        assert server.count("full_record.php") == 1
    assert [r["micrograph_no"] for r in read_rows(tmp_path / "out" / "records.csv")] == ["1"]
    assert [(f.id, f.what) for f in result.failures] == [(2, "page")]
    reason = result.failures[0].reason
    assert "refusing" in reason and "elsewhere.invalid" in reason


def test_oversized_image_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(doitpoms, "MAX_IMAGE_BYTES", 100)
    result = doitpoms.scrape(server.base_url, tmp_path / "out", ids="1", **FAST)
    assert [f.what for f in result.failures] == ["image"]
    assert "exceeds 100" in result.failures[0].reason


def test_a_second_scraper_on_the_same_directory_is_refused(server, tmp_path):
    store = doitpoms.Store(tmp_path / "out", server.base_url)
    try:
        with pytest.raises(doitpoms.ScrapeError, match="another scrape"):
            doitpoms.scrape(server.base_url, tmp_path / "out", ids="1", **FAST)
    finally:
        store.close()


# ----------------------------------------------------------------------------- the CLI


def test_cli_exit_codes_and_listing(tiny_mirror, tmp_path):
    with MirrorServer(tiny_mirror, faults=Faults(fail_ids={2})) as server:
        args = ["--base-url", server.base_url, "--delay", "0", "--backoff", "0.01", "--quiet"]
        done = run_cli(*args, "--out", str(tmp_path / "a"), "--ids", "3-6")
        assert done.returncode == 0, done.stderr
        assert "2 records, 2 images, 2 missing ids" in done.stdout
        failed = run_cli(*args, "--out", str(tmp_path / "b"), "--ids", "1-3", "--retries", "1")
        assert failed.returncode == 1
        assert "id 2 (page)" in failed.stderr and "HTTP 500" in failed.stderr
        assert len(read_rows(tmp_path / "b" / "records.csv")) == 2  # the others are saved


@pytest.fixture
def collected(server, tmp_path):
    """An output directory with data in it, and its snapshot (bad runs must not touch it)."""
    out = tmp_path / "collected"
    doitpoms.scrape(server.base_url, out, ids="1-2", **FAST)
    return out, snapshot(out)


@pytest.mark.parametrize("ids", ["a-b", "5-1", "0", "1-3,x"])
def test_cli_malformed_ids(server, collected, ids):
    out, before = collected
    answer = run_cli("--base-url", server.base_url, "--out", str(out), "--ids", ids)
    assert answer.returncode == 2
    assert answer.stderr.strip().splitlines() == [answer.stderr.strip()]
    assert "--ids" in answer.stderr and repr(ids) in answer.stderr
    assert snapshot(out) == before


def test_cli_unwritable_out(server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    answer = run_cli("--base-url", server.base_url, "--out", str(blocker / "out"), "--ids", "1")
    assert answer.returncode == 2
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write to output directory" in lines[0]
    assert str(blocker / "out") in answer.stderr


def test_cli_unreachable_site_keeps_collected_data(collected):
    out, before = collected
    url = f"http://127.0.0.1:{closed_port()}/miclib/"
    # A scrape into the collected directory from another URL is refused first (bad input) ...
    other = run_cli("--base-url", url, "--out", str(out), "--ids", "1-5", "--backoff", "0.01")
    assert other.returncode == 2 and "holds a scrape of" in other.stderr
    # ... and an unreachable site gives exit 3 and one line naming it.
    fresh = out.parent / "fresh"
    answer = run_cli("--base-url", url, "--out", str(fresh), "--ids", "1-5", "--backoff", "0.01")
    assert answer.returncode == 3
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and url in lines[0]
    assert snapshot(out) == before


def test_cli_bad_base_url(tmp_path):
    answer = run_cli("--base-url", "ftp://example.org/", "--out", str(tmp_path / "x"))
    assert answer.returncode == 2 and "not an http(s) URL" in answer.stderr


# ----------------------------------------------------------------------------- the real mirror


@needs_mirror()
def test_real_mirror_first_records(tmp_path):
    """Ids 1-40 of the real mirror, an empty record (74) and an absent id (118)."""
    with MirrorServer(MIRROR) as server:
        out = tmp_path / "out"
        result = doitpoms.scrape(server.base_url, out, ids="1-40,74,118", **FAST)
    assert result.complete and (result.n_records, result.n_missing) == (40, 2)
    rows = read_rows(out / "records.csv")
    assert_rows_match_mirror(rows, MIRROR, server.base_url)
    for row in rows:
        saved = (out / row["image_file"]).read_bytes()
        assert saved == (MIRROR / "images" / f"{int(row['micrograph_no']):06d}.jpg").read_bytes()


@pytest.mark.slow
@needs_mirror()
def test_full_mirror_scrape_reproduces_the_mirror(tmp_path):
    """Discovery over the whole mirror (delay 0): 870 images, every field equal."""
    mirror_rows = read_rows(MIRROR / "records.csv")
    with_record = [r for r in mirror_rows if any(r[c] for c in doitpoms.FIELD_COLUMNS)]
    with MirrorServer(MIRROR) as server:
        out = tmp_path / "full"
        result = doitpoms.scrape(server.base_url, out, delay=0)
    assert result.complete, [str(f) for f in result.failures[:5]]
    assert (result.n_records, result.n_images) == (len(with_record), 870)
    assert result.last_id == max(int(r["micrograph_no"]) for r in with_record) + (
        doitpoms.DEFAULT_MISSING_RUN
    )
    rows = read_rows(out / "records.csv")
    assert [r["micrograph_no"] for r in rows] == [r["micrograph_no"] for r in with_record]
    assert_rows_match_mirror(rows, MIRROR, server.base_url)
    for row in rows:
        saved = (out / row["image_file"]).read_bytes()
        assert saved == (MIRROR / "images" / f"{int(row['micrograph_no']):06d}.jpg").read_bytes()
    formats = [r["image_format"] for r in rows]
    # The mirror's README: 104 GIF and 9 BMP files among the .jpg names.
    assert (formats.count("GIF"), formats.count("BMP")) == (104, 9)
    assert len(list((out / "images").iterdir())) == 870


def test_a_damaged_state_file_is_refetched(server, tmp_path):
    out = tmp_path / "out"
    doitpoms.scrape(server.base_url, out, ids="1-2", **FAST)
    before = snapshot(out)
    (out / ".scrape" / "ids" / "000002.json").write_text('{"status": "rec')  # damaged
    again = doitpoms.scrape(server.base_url, out, ids="1-2", **FAST)
    assert again.complete and server.count(r"id=2$") == 2 and server.count(r"id=1$") == 1
    assert snapshot(out) == before


def test_mirror_runs_as_a_command(tiny_mirror, tmp_path):
    script = [
        sys.executable,
        "-m",
        "microqa",
        "mirror",
        "--data",
        str(tiny_mirror),
        "--port",
        "0",
    ]
    process = subprocess.Popen(
        script, stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=str(REPO)
    )
    try:
        base_url = process.stdout.readline().split(" at ")[1].split()[0]
        result = doitpoms.scrape(base_url, tmp_path / "out", ids="1-5", **FAST)
        assert result.complete and result.n_records == 4
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
