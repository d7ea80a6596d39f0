"""The OpenAI-compatible backend against a real local HTTP stub that records its requests."""

from __future__ import annotations

import base64
import io
import math
import subprocess
import sys

import pytest
from PIL import Image

from microqa.vlm.backends import load_backend
from microqa.vlm.base import VLMRequest
from microqa.vlm.openai_backend import (
    LogprobsUnavailable,
    OpenAIBackendError,
    letter_probabilities,
)
from microqa.vlm.questions import build_question
from tests.conftest import REPO
from tests.openai_stub import OpenAIStub, deterministic_letter


def _image(seed: int, size=(64, 48)) -> Image.Image:
    image = Image.new("L", size)
    image.putdata([(i * 7 + seed * 31) % 256 for i in range(size[0] * size[1])])
    return image


def _requests(n: int) -> list[VLMRequest]:
    prompt = build_question("technique").prompt
    return [VLMRequest(image=_image(i), prompt=prompt) for i in range(n)]


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


def test_generate_sends_base64_images_and_returns_texts(stub):
    # concurrency 1: the stub's log is then in request order
    backend = load_backend(
        "openai", "stub-vlm", base_url=stub.base_url, api_key="secret", concurrency=1
    )
    requests_ = _requests(3)
    results = backend.generate(requests_, max_new_tokens=12)
    bodies = stub.chat_requests()
    assert len(bodies) == 3
    for body, request, result in zip(bodies, requests_, results, strict=True):
        assert body["model"] == "stub-vlm" and body["max_tokens"] == 12
        user = body["messages"][-1]
        image_part = next(p for p in user["content"] if p["type"] == "image_url")
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.size == request.image.size
        assert decoded.convert("L").tobytes() == request.image.tobytes()
        text_part = next(p for p in user["content"] if p["type"] == "text")
        assert text_part["text"] == request.prompt
        assert result.text == f"The answer is {deterministic_letter(body)}."
        assert result.latency_s > 0
    headers = [r["headers"] for r in stub.requests if r["path"].endswith("/completions")]
    assert all(h.get("Authorization") == "Bearer secret" for h in headers)


def test_score_asks_for_logprobs_and_renormalises_over_letters(stub):
    backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, concurrency=1)
    letters = ["A", "B", "C", "D", "E"]
    results = backend.score(_requests(4), letters)
    for body, result in zip(stub.chat_requests(), results, strict=True):
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
        assert set(result.probabilities) == set(letters)
        assert math.isclose(sum(result.probabilities.values()), 1.0)
        # The stub gives its letter 0.6 and each other letter (spelt " X") 0.0875.
        top = deterministic_letter(body)
        assert result.probabilities[top] == pytest.approx(0.6 / 0.95)
        assert max(result.probabilities, key=result.probabilities.get) == top
    assert backend.revision == f"{stub.base_url}:/weights/stub-vlm"


def test_letters_missing_from_top_logprobs_get_a_bounded_share():
    top = [{"token": "B", "logprob": math.log(0.5)}, {"token": "The", "logprob": math.log(0.3)}]
    top += [{"token": f"x{i}", "logprob": math.log(0.01)} for i in range(18)]  # 20 listed
    probs = letter_probabilities(top, ["A", "B", "C"])
    # Leftover mass 0.02 split over A and C, capped by the smallest listed (0.01): 0.01 each.
    assert probs["B"] == pytest.approx(0.5 / 0.52)
    assert probs["A"] == pytest.approx(0.01 / 0.52) == probs["C"]
    assert letter_probabilities(top[1:], ["A", "B", "C"]) == {}  # no letter listed: no answer


def test_retries_5xx_and_429_with_backoff_then_succeeds(stub):
    backend = load_backend(
        "openai", "stub-vlm", base_url=stub.base_url, backoff_s=0.01, concurrency=1
    )
    stub.fail_next(2, status=500)
    stub.fail_next(1, status=429)
    results = backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 4  # three failures, then the answer
    assert results[0].text.startswith("The answer is")


def test_gives_up_after_retries_naming_the_server(stub):
    backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, backoff_s=0.0, retries=2)
    stub.fail_next(5, status=503)
    with pytest.raises(OpenAIBackendError, match=r"failed after 3 attempts.*HTTP 503"):
        backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 3


def test_client_errors_fail_at_once_with_the_servers_message(stub):
    backend = load_backend("openai", "no-such-model", base_url=stub.base_url, backoff_s=0.0)
    with pytest.raises(OpenAIBackendError, match="no-such-model.*does not exist"):
        backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 1


def test_connection_refused_is_retried_then_reported():
    backend = load_backend(
        "openai", "m", base_url="http://127.0.0.1:9/v1", backoff_s=0.0, retries=1, timeout=2
    )
    with pytest.raises(OpenAIBackendError, match="ConnectionError"):
        backend.generate(_requests(1), max_new_tokens=5)


def test_concurrency_is_bounded():
    with OpenAIStub(delay_s=0.1) as stub:
        backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, concurrency=3)
        backend.generate(_requests(9), max_new_tokens=5)
        assert stub.max_in_flight == 3


def test_server_without_logprobs_raises_a_clear_error():
    with OpenAIStub(logprobs=False) as stub:
        backend = load_backend("openai", "stub-vlm", base_url=stub.base_url)
        with pytest.raises(LogprobsUnavailable, match="mode 'generate'"):
            backend.score(_requests(1), ["A", "B"])


def test_image_budget_downscales_before_sending(stub):
    backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, image_budget=600)
    backend.generate([VLMRequest(image=_image(0, (80, 60)), prompt="Describe.")], max_new_tokens=5)
    url = stub.chat_requests()[0]["messages"][-1]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.width * sent.height <= 600 and sent.width / sent.height == pytest.approx(4 / 3, 0.1)


def test_openai_path_never_imports_torch():
    code = (
        "import sys; from microqa.vlm.backends import load_backend; "
        "from microqa.vlm import runner, parse_choice; "
        "import microqa.vlm.openai_backend; assert 'torch' not in sys.modules, 'torch imported'"
    )
    env_path = f"{REPO / 'lib'}:{REPO}"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path})
