"""logs.notebook_setup: library logs and warnings go to build/logs/<notebook>.log, not stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

from microqa.report import logs
from tests.conftest import REPO

SCRIPT = """
import logging, warnings
from microqa.report import logs
from microqa.run import Run
logs.notebook_setup(Run.start("03_clip_zero_shot", "smoke"))
logging.error("Failed to download weights from the hub")
logging.getLogger("transformers.modeling_utils").warning("some weights were not initialised")
warnings.warn("IProgress not found", UserWarning)
"""


@pytest.mark.integration  # a Python subprocess
def test_logs_and_warnings_go_to_the_log_file_not_stderr(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO / 'lib'}:{REPO}",
        "MICROQA_BUILD": str(tmp_path / "build"),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "Library logs and warnings of this run: build/logs/03_clip_zero_shot.log"
    )
    assert "Failed to download" not in done.stderr and "IProgress" not in done.stderr
    assert "not initialised" not in done.stderr
    log = (tmp_path / "build" / "logs" / "03_clip_zero_shot.log").read_text()
    assert "ERROR root: Failed to download" in log
    assert "WARNING transformers.modeling_utils: some weights" in log
    assert "IProgress not found" in log


def test_a_notebook_of_another_checkout_is_refused(tmp_path):
    other = tmp_path / "clone"
    (other / "lib" / "microqa").mkdir(parents=True)
    (other / "lib" / "microqa" / "__init__.py").write_text("")
    (other / "notebooks").mkdir()
    with pytest.raises(logs.OtherCheckoutError, match="imports microqa from"):
        logs.check_library_checkout(other / "notebooks")
    logs.check_library_checkout(REPO / "notebooks")  # this checkout's own notebooks: fine
    logs.check_library_checkout(tmp_path)  # outside any checkout: nothing to compare
