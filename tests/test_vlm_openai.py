"""The OpenAI-compatible backend against a real local HTTP stub that records its requests."""

from __future__ import annotations

import base64
import io
import math
import subprocess
import sys
import time
from collections import Counter

import pytest
from PIL import Image

from microqa.vlm.backends import load_backend
from microqa.vlm.base import Ask, ImageJob, VLMRequest
from microqa.vlm.openai_backend import LogprobsUnavailable, OpenAIBackendError
from microqa.vlm.questions import build_question
from microqa.vlm.replicas import parse_urls, public_url, rendezvous
from tests.conftest import REPO
from tests.openai_stub import GARBAGE, OpenAIStub, deterministic_letter, request_text_and_image


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
    assert all(
        {k.lower(): v for k, v in h.items()}["authorization"] == "Bearer secret" for h in headers
    )


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
        assert result.letter_mass == pytest.approx(0.95)  # "The" (0.05) is not a letter
        assert max(result.probabilities, key=result.probabilities.get) == top
        assert result.error is None
    assert backend.revision == f"{stub.base_url}:/weights/stub-vlm"


def test_retries_5xx_and_429_with_backoff_then_succeeds(stub):
    backend = load_backend(
        "openai", "stub-vlm", base_url=stub.base_url, backoff_s=0.01, concurrency=1
    )
    stub.fail_next(2, status=500, retry_after=0.01)
    stub.fail_next(1, status=429, retry_after=0.01)
    results = backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 4  # three failures, then the answer
    assert results[0].text.startswith("The answer is") and results[0].error is None
    assert backend.failure_summary() == "1 answered, 0 failed"


def test_gives_up_after_retries_naming_the_server(stub):
    backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, backoff_s=0.0, retries=2)
    stub.fail_next(5, status=503, retry_after=0.01)
    with pytest.raises(OpenAIBackendError, match=r"chat/completions: all 1 requests.*HTTP 503"):
        backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 3  # the client's bounded retries


def test_client_errors_fail_at_once_with_the_servers_message(stub):
    backend = load_backend("openai", "no-such-model", base_url=stub.base_url, backoff_s=0.0)
    with pytest.raises(OpenAIBackendError, match="no-such-model.*does not exist"):
        backend.generate(_requests(1), max_new_tokens=5)
    assert len(stub.chat_requests()) == 1


def test_connection_refused_is_retried_then_reported():
    backend = load_backend(
        "openai", "m", base_url="http://127.0.0.1:9/v1", backoff_s=0.0, retries=1, timeout=2
    )
    with pytest.raises(OpenAIBackendError, match=r"127.0.0.1:9/v1.*Connection"):
        backend.generate(_requests(1), max_new_tokens=5)


def test_concurrency_is_bounded():
    with OpenAIStub(delay_s=0.1) as stub:
        backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, concurrency=3)
        backend.generate(_requests(9), max_new_tokens=5)
        assert stub.max_in_flight == 3


def test_server_without_logprobs_raises_a_clear_error():
    with OpenAIStub(logprobs=False) as stub:
        backend = load_backend("openai", "stub-vlm", base_url=stub.base_url, backoff_s=0.0)
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


# --- a hostile server: malformed 200 replies, rate limits, image-major requests ---------------


def _backend(stub, **options):
    options = {
        "base_url": stub.base_url,
        "backoff_s": 0.0,
        "concurrency": 1,
        "retries": 2,
        **options,
    }
    return load_backend("openai", "stub-vlm", **options)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_malformed_reply_is_retried_like_a_5xx(stub, kind):
    backend = _backend(stub)
    stub.garbage_next(1, kind)
    result = backend.score(_requests(1), ["A", "B", "C", "D", "E"])[0]
    assert len(stub.chat_requests()) == 2  # the garbage, then the answer
    assert result.error is None and sum(result.probabilities.values()) == pytest.approx(1)
    assert backend.failures == {}


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("html", "not JSON (text/html)"),
        ("cut_json", "not JSON (application/json)"),
        ("empty_choices", "no choices"),
        ("not_object", "not a JSON object"),
        ("no_message", "a choice without a message"),
        ("no_logprobs", "no token log-probabilities"),
        ("nan_logprob", "invalid log-probabilities"),
    ],
)
def test_persistent_garbage_is_a_counted_failure_and_the_rest_is_answered(stub, kind, reason):
    backend = _backend(stub)
    stub.garbage_next(3, kind)  # the first question's three attempts
    results = backend.score(_requests(3), ["A", "B", "C", "D", "E"])
    assert reason in results[0].error and results[0].probabilities == {}
    assert results[0].letter_mass is None
    assert all(r.error is None and r.probabilities for r in results[1:])
    assert sum(backend.failures.values()) == 1 and backend.n_answered == 2
    assert backend.failure_summary().startswith("2 answered, 1 failed: 1 x malformed reply")


def test_generate_records_garbage_as_a_failed_answer(stub):
    backend = _backend(stub, retries=0)
    stub.garbage_next(1, "no_message")
    results = backend.generate(_requests(2), max_new_tokens=5)
    assert results[0].text == "" and "without a message" in results[0].error
    assert results[1].text.startswith("The answer is")


def test_intermittent_garbage_never_crashes_and_every_failure_is_named():
    with OpenAIStub(garbage_every=2) as stub:  # every second request is malformed
        backend = _backend(stub, concurrency=3, retries=1)
        questions_ = [build_question("technique", rotation=r) for r in range(5)]
        answered = []
        for i in range(4):
            answered += backend.score_image(
                _image(i), [q.prompt for q in questions_], [list(q.letters) for q in questions_]
            )
        assert len(stub.chat_requests()) >= 30  # garbage was served, and retried
    assert len(answered) == 20
    failed = [r for r in answered if r.error]
    assert all(r.error.startswith("malformed reply: ") for r in failed)
    assert all(sum(r.probabilities.values()) == pytest.approx(1) for r in answered if not r.error)
    assert sum(backend.failures.values()) == len(failed) < len(answered)


def test_every_request_failing_is_one_line_naming_the_url_and_the_reason(stub):
    backend = _backend(stub)
    stub.garbage_next(100, "html")
    with pytest.raises(OpenAIBackendError) as error:
        backend.score_image(_image(0), ["Q1 A) x B) y", "Q2 A) x B) y"], [["A", "B"]] * 2)
    message = str(error.value)
    assert "\n" not in message and f"{stub.base_url}/chat/completions" in message
    assert "all 2 requests failed" in message and "not JSON (text/html)" in message


def test_rate_limit_waits_for_retry_after(stub):
    backend = _backend(stub)
    stub.fail_next(1, status=429, retry_after=1)
    result = backend.generate(_requests(1), max_new_tokens=5)[0]
    first, second = (r["time"] for r in stub.requests if r["path"].endswith("/completions"))
    assert second - first >= 0.9 and result.error is None


def test_5xx_without_retry_after_is_retried_with_the_clients_backoff(stub):
    backend = _backend(stub, retries=1)
    stub.fail_next(1, status=500)
    assert backend.generate(_requests(1), max_new_tokens=5)[0].error is None
    assert len(stub.chat_requests()) == 2


def test_score_image_sends_a_byte_identical_image_part_first_question_alone():
    with OpenAIStub(delay_s=0.05) as stub:
        backend = _backend(stub, concurrency=4)
        questions_ = [build_question("category", rotation=r) for r in range(4)]
        questions_ += [build_question("technique", rotation=r) for r in range(5)]
        prompts = [q.prompt for q in questions_]
        letters = [list(q.letters) for q in questions_]
        first = backend.score_image(_image(0), prompts, letters)
        second = backend.score_image(_image(1), prompts, letters)
        log = [r for r in stub.requests if r["path"].endswith("/chat/completions")]
    parts = stub.image_parts()
    assert len(set(parts[:9])) == 1 and len(set(parts[9:])) == 1 and parts[0] != parts[9]
    for body in stub.chat_requests():  # the image comes before the question text
        assert body["messages"][-1]["content"][0]["type"] == "image_url"
    # the first question of an image is answered before the others are sent (cache warm-up)
    assert all(r["time"] >= log[0]["time"] + 0.05 for r in log[1:9])
    assert stub.max_in_flight > 1  # the rest go concurrently
    for q, result in zip(questions_, first + second, strict=False):
        assert set(result.probabilities) == set(q.letters)
        assert result.letter_mass == pytest.approx(0.95)


def test_generate_image_shares_the_image_part(stub):
    backend = _backend(stub)
    results = backend.generate_image(_image(3), ["Describe.", "And again."], max_new_tokens=8)
    assert len(set(stub.image_parts())) == 1 and len(results) == 2
    assert [r.error for r in results] == [None, None]


def test_score_uses_the_one_scoring_rule(stub):
    from microqa.vlm.scoring import letter_scores

    backend = _backend(stub)
    result = backend.score(_requests(1), ["A", "B", "C", "D", "E"])[0]
    expected = letter_scores(result.logprobs.items(), ["A", "B", "C", "D", "E"])
    assert result.probabilities == pytest.approx(expected.probabilities)
    assert result.letter_mass == pytest.approx(expected.letter_mass)


# --- many images in flight, several replicas --------------------------------------------------


def _jobs(n_images: int, n_questions: int = 3) -> list[ImageJob]:
    prompt = build_question("technique").prompt
    return [
        ImageJob(
            f"image-{i}",
            lambda i=i: _image(i),
            tuple(Ask(f"{prompt} #{q}", tuple("ABCDE")) for q in range(n_questions)),
        )
        for i in range(n_images)
    ]


def test_many_images_in_flight_up_to_the_window_first_question_alone():
    with OpenAIStub(delay_s=0.05) as stub:
        backend = _backend(stub, concurrency=8)
        done = list(backend.answer_images(_jobs(20)))
        log = [r for r in stub.requests if r["path"].endswith("/chat/completions")]
    assert stub.max_in_flight == 8  # the window is filled across images, never exceeded
    assert backend.last_run.max_encoded <= 8  # only images with questions in flight are held
    assert len(done) == 20 and all(r.error is None for _, rs in done for r in rs)
    by_image: dict[str, list] = {}
    for entry in log:
        by_image.setdefault(request_text_and_image(entry["body"])[1], []).append(entry)
    assert len(by_image) == 20  # one byte-identical image part per image
    for entries in by_image.values():
        assert len(entries) == 3
        first, *rest = sorted(entries, key=lambda e: e["time"])
        assert first["body"]["messages"][-1]["content"][1]["text"].endswith("#0")
        # the rest are sent only after the first has been answered (its prefix is cached)
        assert all(e["time"] >= first["time"] + 0.05 for e in rest)


def test_cost_per_question_shares_the_wall_time_among_requests_in_flight(stub):
    stub.delay_s = 0.1
    backend = _backend(stub, concurrency=4)
    start = time.perf_counter()
    results = [r for _, rs in backend.answer_images(_jobs(8, 1)) for r in rs]
    elapsed = time.perf_counter() - start
    # 8 requests, 4 at a time: ~0.1 s of wall time shared by 4, each costs ~0.025 s
    assert sum(r.latency_s for r in results) == pytest.approx(elapsed, rel=0.2)
    assert all(0.015 < r.latency_s < 0.06 for r in results)


def test_rendezvous_moves_only_the_removed_replicas_images():
    urls = [f"http://127.0.0.1:{8000 + k}/v1" for k in range(4)]
    keys = [f"{k:064x}" for k in range(2000)]
    before = {key: rendezvous(key, urls) for key in keys}
    shares = Counter(before.values())
    assert set(shares) == set(urls) and min(shares.values()) > 400  # ~500 each
    after = {key: rendezvous(key, urls[:2] + urls[3:]) for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == urls[2]}
    assert rendezvous(keys[0], list(reversed(urls))) == before[keys[0]]  # order does not matter


def test_parse_urls_takes_repeats_comma_lists_and_files(tmp_path):
    listing = tmp_path / "replicas.txt"
    listing.write_text("# two replicas\nhttp://10.0.0.2:8000/v1\n\nhttp://10.0.0.3:8000/v1/\n")
    urls = parse_urls(["http://a:1/v1,http://b:2/v1", str(listing), "http://a:1/v1"])
    assert urls == [
        "http://a:1/v1",
        "http://b:2/v1",
        "http://10.0.0.2:8000/v1",
        "http://10.0.0.3:8000/v1",
    ]
    with pytest.raises(ValueError, match="http\\(s\\) URLs or a file"):
        parse_urls(["localhost:8000"])
    assert public_url("https://user:secret@host:8443/v1?key=abc") == "https://host:8443/v1"


def test_each_image_goes_to_one_replica_and_a_failing_replicas_images_are_rerouted():
    with OpenAIStub(delay_s=0.01) as a, OpenAIStub(delay_s=0.01) as b, OpenAIStub() as bad:
        urls = [a.base_url, b.base_url, bad.base_url]
        backend = _backend(a, base_url=urls, concurrency=4, retries=0)
        bad.fail_next(10_000, status=503)
        jobs = _jobs(24)
        done = list(backend.answer_images(jobs))
        answered_by = {
            stub.base_url: {request_text_and_image(body)[1] for body in stub.chat_requests()}
            for stub in (a, b)
        }
        bad_requests = len(bad.chat_requests())
    assert len(done) == 24 and all(r.error is None for _, rs in done for r in rs)
    assert not answered_by[a.base_url] & answered_by[b.base_url]  # every image on one replica
    assert backend.provenance()["taken_out"].keys() == {bad.base_url}
    assert "503" in backend.provenance()["taken_out"][bad.base_url]
    # images routed to the bad replica were asked again on their next replica by rendezvous
    urls_by_part = {backend._encode(job.load()): job for job in jobs}
    for url, parts in answered_by.items():
        for part in parts:
            assert rendezvous(urls_by_part[part].key, [a.base_url, b.base_url]) == url
    rerouted = [job for job in jobs if rendezvous(job.key, urls) == bad.base_url]
    assert rerouted and 1 <= bad_requests <= 4  # taken out after its first failures
    assert backend.last_run.rerouted == bad_requests


def test_one_replica_left_is_never_taken_out_its_failures_are_errors(stub):
    backend = _backend(stub, retries=0)
    stub.fail_next(1, status=503)
    results = backend.score(_requests(2), list("ABCDE"))
    assert "HTTP 503" in results[0].error and results[1].error is None
    assert backend.provenance() == {"replicas": [stub.base_url], "taken_out": {}}


def test_replicas_share_one_cache_key_and_must_serve_the_same_weights():
    with OpenAIStub() as a, OpenAIStub() as b, OpenAIStub(root="/weights/other") as c:
        backend = load_backend("openai", "stub-vlm", base_url=[a.base_url, b.base_url])
        assert backend.revision == "replicas:/weights/stub-vlm"  # one key for every replica
        with pytest.raises(ValueError, match="serve different weights"):
            load_backend("openai", "stub-vlm", base_url=[a.base_url, c.base_url])
