"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama) as a VLM backend.

Built on the official `openai` client: its timeouts, its retries with exponential backoff on
connection errors, 408/409/429 and 5xx (honouring Retry-After), and its typed errors. On top
of it, a reply with status 200 that is not a usable answer (HTML, cut-off JSON,
`{"choices": []}`, a missing field, missing or NaN log-probabilities) is retried like a 5xx, at
most `retries` times with backoff, then recorded as a failed answer with its reason
(`ScoreResult.error` / `GenerateResult.error`; counted in `failures`). Answers already
received are never thrown away. When EVERY request of a call fails (a dead or wrong server), the
call raises `OpenAIBackendError`, one line naming the URL and what was wrong, rather than
spending the run recording failures; a refusal that retrying cannot fix (401, 404: unknown
model, 400) raises at once with the server's message.

Images travel as base64 data URLs in an `image_url` part placed BEFORE the question text,
downscaled on this side to the resolution budget when one is given. `score_image` /
`generate_image` (the runner's image-major path) encode an image once and send its questions
consecutively, the first alone and the rest concurrently: every request carries a
byte-identical prefix (model, image part), so a server with prefix caching (vLLM
`--enable-prefix-caching`, SGLang's radix cache) runs the vision encoder and prefills the image
tokens once per image, and the first request warms the cache for the others.

`score` asks for one token with `logprobs: true, top_logprobs: 20` and reads the letters with
the study's one scoring rule (`scoring.letter_scores`: logsumexp over a letter's single-token
spellings, case-sensitive), which also gives the letter mass.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from PIL import Image

from microqa.vlm.base import GenerateResult, ScoreResult, VLMRequest
from microqa.vlm.scoring import letter_scores

TOP_LOGPROBS = 20
NO_LOGPROBS = "no token log-probabilities in the reply"


class OpenAIBackendError(RuntimeError):
    """The server refused or kept failing; the message names the server and the reason."""


class LogprobsUnavailable(OpenAIBackendError):
    """The server returned no token log-probabilities, so `score` mode cannot work."""


class MalformedReply(ValueError):
    """A 200 reply that is not a usable answer; the message says what was wrong."""


def fit_to_budget(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """The image, downscaled (aspect kept) so width*height <= max_pixels; RGB."""
    image = image.convert("RGB")
    if max_pixels and image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def image_data_url(image: Image.Image, *, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = "image/png" if fmt.upper() == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


# --- reading a reply -----------------------------------------------------------------------------


def _message_choice(text: str, content_type: str) -> dict[str, Any]:
    """The first choice of a chat-completion body, or MalformedReply saying what is wrong."""
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedReply(
            f"not JSON ({content_type or 'no content type'}): {text[:60]!r}"
        ) from None
    if not isinstance(body, dict):
        raise MalformedReply(f"not a JSON object: {text[:60]!r}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"no choices: {text[:60]!r}")
    if not isinstance(choices[0].get("message"), dict):
        raise MalformedReply("a choice without a message")
    return choices[0]


def read_text(text: str, content_type: str = "") -> str:
    content = _message_choice(text, content_type)["message"].get("content")
    if not isinstance(content, str):
        raise MalformedReply("a message without text content")
    return content


def read_top_logprobs(text: str, content_type: str = "") -> list[tuple[str, float]]:
    """(token, log-probability) pairs of the first generated position."""
    logprobs = _message_choice(text, content_type).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
    if not top:
        raise MalformedReply(NO_LOGPROBS)
    try:
        return [(str(entry["token"]), float(entry["logprob"])) for entry in top]
    except (KeyError, TypeError, ValueError):
        raise MalformedReply(f"top_logprobs entries without token/logprob: {top[:2]!r}") from None


# --- the backend ---------------------------------------------------------------------------------


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        image_budget: int | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        revision: str | None = None,
        weights: str = "pretrained",
        image_format: str = "PNG",
    ):
        if not base_url:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000/v1")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.image_budget = image_budget
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.weights = weights
        self.image_format = image_format
        # A local server ignores the key; the client insists on one.
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout,
            max_retries=self.retries,
        )
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()  # reason -> failed requests
        self.n_answered = 0
        # The cache keys answers by weights identity; a server names its weights in /models.
        self.revision = revision or self._served_revision()

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _served_revision(self) -> str:
        try:
            raw = self._client.with_options(max_retries=0).models.with_raw_response.list()
            for entry in json.loads(raw.text).get("data", []):
                if entry.get("id") == self.model_id:
                    return f"{self.base_url}:{entry.get('root') or entry.get('id')}"
        except (openai.OpenAIError, ValueError, AttributeError, TypeError):
            pass  # /models is optional in the protocol; the server URL still names the weights
        return f"{self.base_url}:{self.model_id}"

    # --- one request -----------------------------------------------------------------------
    def _ask(self, payload: dict[str, Any], read: Callable[[str, str], Any]) -> tuple[Any, str]:
        """(read(reply), "") or (None, reason). The client retries what HTTP says is
        transient; a malformed 200 is retried here, with backoff, at most `retries` times."""
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._client.chat.completions.with_raw_response.create(**payload)
                value = read(raw.text, raw.headers.get("content-type", ""))
            except MalformedReply as exc:
                reason = f"malformed reply: {exc}"
                continue
            except openai.APIStatusError as exc:
                detail = _server_message(exc)
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    reason = f"HTTP {exc.status_code} after {self.retries + 1} attempts: {detail}"
                    break  # the client has already retried it with backoff
                raise OpenAIBackendError(
                    f"{self.url} answered HTTP {exc.status_code}: {detail}"
                ) from None
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                reason = f"{type(exc).__name__} after {self.retries + 1} attempts: {cause}"
                break
            with self._lock:
                self.n_answered += 1
            return value, ""
        with self._lock:
            self.failures[reason] += 1
        return None, reason

    def _payload(self, image_url: str, prompt: str, system: str | None, **extra) -> dict:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        # The image first: everything before the question text is shared by an image's
        # questions, the prefix a server's cache can reuse.
        content = [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": prompt},
        ]
        messages.append({"role": "user", "content": content})
        return {"model": self.model_id, "messages": messages, "temperature": 0.0, **extra}

    def _encode(self, image: Image.Image) -> str:
        return image_data_url(fit_to_budget(image, self.image_budget), fmt=self.image_format)

    # --- many requests ---------------------------------------------------------------------
    def _run(self, jobs: Sequence[Callable[[], Any]], *, warm_first: bool) -> list:
        """Run the jobs, at most `concurrency` at a time (`warm_first`: the first alone, so
        the others find its prefix cached). Latency: the wall time shared equally."""
        start = time.perf_counter()
        results = []
        if warm_first and jobs:
            results.append(jobs[0]())
            jobs = jobs[1:]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results += list(pool.map(lambda job: job(), jobs))
        share = (time.perf_counter() - start) / max(1, len(results))
        for result in results:
            result.latency_s = share
        self._raise_if_all_failed(results)
        return results

    def _raise_if_all_failed(self, results: list) -> None:
        reasons = [r.error for r in results]
        if not results or not all(reasons):
            return
        common = Counter(reasons).most_common(1)[0][0]
        message = (
            f"{self.url}: all {len(results)} requests failed for model {self.model_id} "
            f"(answers received earlier are kept); {common}"
        )
        if all(NO_LOGPROBS in r for r in reasons):
            raise LogprobsUnavailable(
                f"{message}; this server cannot score options: run with mode 'generate'"
            )
        raise OpenAIBackendError(message)

    def _generate_job(self, url: str, prompt: str, system: str | None, max_new_tokens: int):
        def job() -> GenerateResult:
            payload = self._payload(url, prompt, system, max_tokens=max_new_tokens)
            text, reason = self._ask(payload, read_text)
            return GenerateResult(text=text or "", latency_s=0.0, error=reason or None)

        return job

    def _score_job(self, url: str, prompt: str, system: str | None, letters: Sequence[str]):
        def read(text: str, content_type: str):
            top = read_top_logprobs(text, content_type)
            try:
                return top, letter_scores(top, letters)
            except ValueError as exc:  # NaN or positive log-probabilities
                raise MalformedReply(str(exc)) from None

        def job() -> ScoreResult:
            payload = self._payload(
                url, prompt, system, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS
            )
            value, reason = self._ask(payload, read)
            if value is None:
                return ScoreResult(probabilities={}, latency_s=0.0, error=reason)
            top, scores = value
            return ScoreResult(
                probabilities=scores.probabilities,
                latency_s=0.0,
                logprobs=dict(top),
                letter_mass=scores.letter_mass,
            )

        return job

    # --- Backend protocol ---------------------------------------------------------------------
    def generate(self, requests: list[VLMRequest], *, max_new_tokens: int) -> list[GenerateResult]:
        urls = self._urls(requests)
        jobs = [
            self._generate_job(u, r.prompt, r.system, max_new_tokens)
            for u, r in zip(urls, requests, strict=True)
        ]
        return self._run(jobs, warm_first=False)

    def score(self, requests: list[VLMRequest], letters: list[str]) -> list[ScoreResult]:
        urls = self._urls(requests)
        jobs = [
            self._score_job(u, r.prompt, r.system, letters)
            for u, r in zip(urls, requests, strict=True)
        ]
        return self._run(jobs, warm_first=False)

    def score_image(
        self, image: Image.Image, prompts: list[str], letters: list[list[str]]
    ) -> list[ScoreResult]:
        url = self._encode(image)  # once: byte-identical image part for every question
        jobs = [
            self._score_job(url, p, None, list(ls)) for p, ls in zip(prompts, letters, strict=True)
        ]
        return self._run(jobs, warm_first=True)

    def generate_image(
        self, image: Image.Image, prompts: list[str], *, max_new_tokens: int
    ) -> list[GenerateResult]:
        url = self._encode(image)
        jobs = [self._generate_job(url, p, None, max_new_tokens) for p in prompts]
        return self._run(jobs, warm_first=True)

    def _urls(self, requests: Sequence[VLMRequest]) -> list[str]:
        """Data URLs, each image encoded once even when several requests share it."""
        encoded: dict[int, str] = {}
        for request in requests:
            if id(request.image) not in encoded:
                encoded[id(request.image)] = self._encode(request.image)
        return [encoded[id(r.image)] for r in requests]

    def failure_summary(self) -> str:
        """One line: answered and failed requests, and why (for logs and provenance)."""
        with self._lock:
            failed = sum(self.failures.values())
            reasons = "; ".join(f"{n} x {why}" for why, n in self.failures.most_common(3))
        return f"{self.n_answered} answered, {failed} failed" + (f": {reasons}" if failed else "")

    def visual_tokens(self, image: Image.Image) -> int:
        raise NotImplementedError(
            "an OpenAI-compatible server does not report per-image visual tokens; "
            "measure them with the hf backend's processor"
        )


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return " ".join(str(body or exc.message).split())[:300]
