"""The study driven end to end through a real OpenAI-compatible server: `transformers serve`
(the server that ships with the pinned transformers) serving the tiny random-weight Qwen3-VL,
on 127.0.0.1, in generate mode (that server returns no token log-probabilities, so score mode
is tested on the stub only). Its answers are noise; what is tested is the protocol: every
question reaches the server with its image and comes back as text, the answers are committed
to the cache, a rerun asks nothing again, and a hint on score mode names the cause.

Needs `transformers serve`'s own dependencies (fastapi, uvicorn: the dev extra)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from microqa.data import dataset
from microqa.vlm import runner, tiny
from microqa.vlm.openai_backend import LogprobsUnavailable
from tests.vlm_data import make_dataset

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi", reason="transformers serve needs fastapi (the dev extra)")
    pytest.importorskip("uvicorn", reason="transformers serve needs uvicorn (the dev extra)")
    root = tmp_path_factory.mktemp("serve")
    model_dir = tiny.build_tiny_vlm("qwen3_vl", root / "tiny-qwen3-vl")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    cli = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen(
        [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
        + ["--device", "cpu", "--log-level", "info"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + START_TIMEOUT_S
    try:
        while True:  # bounded: until /health answers, the server exits, or the deadline
            if proc.poll() is not None or time.time() > deadline:
                output = (root / "server.log").read_text()
                pytest.fail(f"transformers serve did not start: {output}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(model_dir), root / "server.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_study_in_generate_mode_through_transformers_serve(server, tmp_path, monkeypatch):
    base_url, model, server_log = server
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    records = dataset.load_records(make_dataset(tmp_path / "ds"))
    sample = runner.question_sample(records, 3)
    settings = runner.RunSettings(
        mode="generate", jobs=(("technique", "study"),), rotate=False, describe_tokens=8
    )

    def run():
        return runner.run_study(
            [model],
            backend="openai",
            sample=sample,
            settings=settings,
            cache_path=tmp_path / "cache.sqlite",
            backend_options={"base_url": base_url, "concurrency": 4, "weights": "random"},
            log=lambda *_: None,
        )

    first = run()
    assert not first.failures
    assert len(first.answers) == 3 and len(first.descriptions) == 3  # 3 images, 1 + open
    assert not first.answers["cached"].any()
    for text in list(first.answers["raw_text"]) + list(first.descriptions["raw_text"]):
        assert isinstance(text, str) and text  # the random model's tokens, as text
    posts = server_log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert posts >= 6  # every question reached the real server and was answered
    assert first.servers[model]["replicas"] == [base_url]
    second = run()
    assert second.answers["cached"].all() and second.descriptions["cached"].all()
    assert server_log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == posts


def test_score_mode_on_a_server_without_logprobs_says_so(server, tmp_path):
    from microqa.vlm.backends import load_backend
    from microqa.vlm.questions import build_question
    from tests.test_vlm_openai import _image

    base_url, model, _ = server
    backend = load_backend("openai", model, base_url=base_url, retries=0)
    q = build_question("technique")
    with pytest.raises(LogprobsUnavailable, match="mode 'generate'"):
        backend.score_image(_image(0), [q.prompt], [list(q.letters)])
