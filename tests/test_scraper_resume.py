"""Kill the real scraper process (SIGKILL) at random points, rerun it, and compare every file
with an uninterrupted run's."""

from __future__ import annotations

import random
import signal
import subprocess
import time

from microqa.data import doitpoms
from microqa.data.mirror import MirrorServer
from tests.scraper_helpers import cli_command, cli_env, make_numbered_mirror, read_rows, snapshot

MISSING_RUN = 3  # the numbered mirror's gaps are single ids (every fifth is empty)


def test_sigkill_at_random_points_then_resume_gives_the_same_files(tmp_path):
    mirror = make_numbered_mirror(tmp_path / "mirror", 40)
    rng = random.Random(20250101)
    with MirrorServer(mirror) as server:
        reference = tmp_path / "reference"
        done = doitpoms.scrape(server.base_url, reference, delay=0, missing_run=MISSING_RUN)
        assert done.complete and done.n_records == 32

        out = tmp_path / "killed"
        command = cli_command(
            "--base-url",
            server.base_url,
            "--out",
            str(out),
            "--delay",
            "0.01",
            "--missing-run",
            str(MISSING_RUN),
        )
        kills, finished = 0, False
        for _attempt in range(40):  # until a run gets to the end before its kill
            process = subprocess.Popen(
                command,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                env=cli_env(),
            )
            # Kill after a random number of progress lines plus a random fraction of the next
            # id's work: this lands inside fetches, image writes and state writes alike.
            for _ in range(rng.randint(1, 5)):
                if not process.stderr.readline():
                    break
            time.sleep(rng.uniform(0.0, 0.03))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            returncode = process.wait(timeout=30)
            process.stderr.close()
            # Whatever is on disk now is consistent: each row's image is there, in full.
            if (out / "records.csv").exists():
                for row in read_rows(out / "records.csv"):
                    if row["image_file"]:
                        saved = (out / row["image_file"]).read_bytes()
                        assert doitpoms.inspect_image(saved).sha256 == row["image_sha256"]
            if returncode == 0:
                finished = True
                break
        assert finished and kills >= 5, (finished, kills)
        final = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=60)
        assert final.returncode == 0, final.stderr
        assert "0 requests" in final.stdout  # nothing was left to do
    assert snapshot(out) == snapshot(reference)
