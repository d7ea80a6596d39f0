"""cli.py: expected errors are one line `error: ...` with exit 2; --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys

from tests import hostile_data
from tests.scraper_helpers import cli_env


def microqa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "microqa", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )


def test_a_bad_dataset_is_one_line_and_exit_2(tmp_path):
    folder = hostile_data.duplicate_ids(tmp_path / "d")
    done = microqa("vlm", "--model", "m", "--backend", "openai", "--dataset", str(folder))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "records.csv, rows 2, 4" in line


def test_debug_shows_the_traceback(tmp_path):
    folder = hostile_data.duplicate_ids(tmp_path / "d")
    done = microqa("--debug", "vlm", "--model", "m", "--dataset", str(folder))
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "DatasetError" in done.stderr


def test_a_missing_dataset_folder_is_named(tmp_path):
    done = microqa("sample", "--mirror", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "nowhere" in line and "Traceback" not in done.stderr


def test_a_huge_id_range_is_not_materialised(tmp_path):
    # Memory capped at 1 GiB: a list of 10^8 ids would not fit; the lazy range does.
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30));"
        "from microqa.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "scrape", "--base-url", "http://127.0.0.1:9/miclib/"]
        + ["--out", str(tmp_path / "o"), "--ids", "1-100000000", "--retries", "0", "--quiet"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert done.returncode == 3, done.stderr  # the site is unreachable: exit 3, not a MemoryError
    assert "MemoryError" not in done.stderr and done.stderr.startswith("error: ")
