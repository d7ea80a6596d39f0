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
downscaled on this side to the resolution budget when one is given. `answer_images` (the
runner's path) keeps up to `concurrency` requests in flight per replica ACROSS images
(`microqa.vlm.inflight`): an image is encoded once, its questions all go to one replica
(`microqa.vlm.replicas`: rendezvous hashing of the image's sha256 over one or more base URLs),
each with a byte-identical prefix (model, image part), the first alone and the rest after it
returned, so a server with prefix caching (vLLM `--enable-prefix-caching`, SGLang's radix
cache) runs the vision encoder and prefills the image tokens once per image. `score_image`,
`generate_image`, `score` and `generate` go through the same scheduler.

`score` asks for one token with `logprobs: true, top_logprobs: 20` and reads the letters with
the study's one scoring rule (`scoring.letter_scores`: logsumexp over a letter's single-token
spellings, case-sensitive), which also gives the letter mass.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import openai
from PIL import Image

from microqa.vlm.base import Ask, GenerateResult, ImageJob, ScoreResult, VLMRequest
from microqa.vlm.inflight import InFlight
from microqa.vlm.replicas import Replicas, parse_urls, public_url
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

FAIL_FAST = 32  # this many requests failing before any answer: the server is dead or wrong


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | Sequence[str],
        api_key: str | None = None,
        image_budget: int | None = None,
        concurrency: int = 64,
        timeout: float = 120.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        revision: str | None = None,
        weights: str = "pretrained",
        image_format: str = "PNG",
    ):
        urls = parse_urls(base_url)
        if not urls:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000/v1")
        self.model_id = model
        self.replicas = Replicas(urls)
        self.base_url = urls[0]
        self.image_budget = image_budget
        self.concurrency = max(1, int(concurrency))  # requests in flight per replica
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.weights = weights
        self.image_format = image_format
        # One client per replica. A local server ignores the key; the client insists on one.
        self._clients = {
            url: openai.OpenAI(
                base_url=url,
                api_key=api_key or "EMPTY",
                timeout=timeout,
                max_retries=self.retries,
                # room for every request in flight (httpx keeps 100 connections by default)
                http_client=openai.DefaultHttpxClient(
                    limits=httpx.Limits(max_connections=self.concurrency + 8)
                ),
            )
            for url in urls
        }
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()  # reason -> failed requests
        self.n_answered = 0
        self.last_run: InFlight | None = None  # the last run's scheduler (its statistics)
        # The cache keys answers by weights identity; a server names its weights in /models.
        self.revision = revision or self._served_revision()

    @property
    def url(self) -> str:
        return ", ".join(f"{u}/chat/completions" for u in self.replicas.live)

    def _served_root(self, url: str) -> str | None:
        try:
            client = self._clients[url].with_options(max_retries=0)
            raw = client.models.with_raw_response.list()
            for entry in json.loads(raw.text).get("data", []):
                if entry.get("id") == self.model_id:
                    return entry.get("root") or entry.get("id")
        except (openai.OpenAIError, ValueError, AttributeError, TypeError):
            pass  # /models is optional in the protocol; the server URL still names the weights
        return None

    def _served_revision(self) -> str:
        """One replica: its URL and the weights it names. Several: the weights they all name
        (so answers from any replica share one cache key), or their URLs when unnamed."""
        if len(self.replicas.urls) == 1:
            return f"{self.base_url}:{self._served_root(self.base_url) or self.model_id}"
        roots = {url: self._served_root(url) for url in self.replicas.urls}
        if None in roots.values():
            return f"{','.join(sorted(roots))}:{self.model_id}"
        if len(set(roots.values())) > 1:
            raise ValueError(
                f"the replicas serve different weights for {self.model_id}: "
                + ", ".join(f"{public_url(u)} -> {r}" for u, r in roots.items())
            )
        return f"replicas:{next(iter(roots.values()))}"

    def provenance(self) -> dict[str, object]:
        """The replicas as given (no credentials) and any taken out, with why."""
        return self.replicas.provenance()

    # --- one request -----------------------------------------------------------------------
    def _ask(
        self, replica: str, payload: dict[str, Any], read: Callable[[str, str], Any]
    ) -> tuple[Any, str, bool]:
        """(read(reply), "", False) or (None, reason, whether the replica looks dead: a
        connection error or a 5xx after the client's retries). The client retries what HTTP
        says is transient; a malformed 200 is retried here, with backoff, `retries` times."""
        reason, dead = "", False
        url = f"{replica}/chat/completions"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._clients[replica].chat.completions.with_raw_response.create(**payload)
                value = read(raw.text, raw.headers.get("content-type", ""))
            except MalformedReply as exc:
                reason = f"malformed reply: {exc}"
                continue
            except openai.APIStatusError as exc:
                detail = _server_message(exc)
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    reason = f"HTTP {exc.status_code} after {self.retries + 1} attempts: {detail}"
                    dead = exc.status_code >= 500
                    break  # the client has already retried it with backoff
                raise OpenAIBackendError(
                    f"{url} answered HTTP {exc.status_code}: {detail}"
                ) from None
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                reason = f"{type(exc).__name__} after {self.retries + 1} attempts: {cause}"
                dead = True
                break
            with self._lock:
                self.n_answered += 1
            return value, "", False
        if len(self.replicas.urls) > 1:
            reason = f"{public_url(replica)}: {reason}"
        return None, reason, dead

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

    def _send(self, replica: str, image_url: str, ask: Ask, system: str | None = None):
        """One question to one replica: (result, why the replica looks dead or "")."""
        if ask.max_new_tokens is not None:
            payload = self._payload(image_url, ask.prompt, system, max_tokens=ask.max_new_tokens)
            text, reason, dead = self._ask(replica, payload, read_text)
            result = GenerateResult(text=text or "", latency_s=0.0, error=reason or None)
            return result, reason if dead else ""
        letters = list(ask.letters)

        def read(text: str, content_type: str):
            top = read_top_logprobs(text, content_type)
            try:
                return top, letter_scores(top, letters)
            except ValueError as exc:  # NaN or positive log-probabilities
                raise MalformedReply(str(exc)) from None

        payload = self._payload(
            image_url, ask.prompt, system, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS
        )
        value, reason, dead = self._ask(replica, payload, read)
        if value is None:
            failed = ScoreResult(probabilities={}, latency_s=0.0, error=reason)
            return failed, reason if dead else ""
        top, scores = value
        result = ScoreResult(
            probabilities=scores.probabilities,
            latency_s=0.0,
            logprobs=dict(top),
            letter_mass=scores.letter_mass,
        )
        return result, ""

    # --- many images in flight ---------------------------------------------------------------
    def answer_images(
        self, jobs: Sequence[ImageJob], *, system: str | None = None
    ) -> Iterator[tuple[ImageJob, list | None]]:
        """Every question of every job, up to `concurrency` requests in flight per replica
        (`microqa.vlm.inflight`); yields (job, results in question order) as images finish,
        results None for an image that could not be loaded. Raises OpenAIBackendError when
        the first requests (all of them, or FAIL_FAST) fail without a single answer."""
        run = InFlight(
            self.replicas,
            window=self.concurrency,
            encode=self._encode,
            send=lambda replica, url, ask: self._send(replica, url, ask, system),
        )
        self.last_run = run
        total = sum(len(job.asks) for job in jobs)
        answered, reasons = 0, []
        for job, results in run.answer(jobs):
            for result in results or ():
                if result.error:
                    reasons.append(result.error)
                    with self._lock:
                        self.failures[result.error] += 1
                else:
                    answered += 1
            if not answered and len(reasons) >= min(total, FAIL_FAST):
                self._raise_all_failed(reasons, total)
            yield job, results

    def _raise_all_failed(self, reasons: list[str], total: int) -> None:
        common = Counter(reasons).most_common(1)[0][0]
        which = f"all {total}" if len(reasons) == total else f"the first {len(reasons)} of {total}"
        message = (
            f"{self.url}: {which} requests failed for model {self.model_id} "
            f"(answers received earlier are kept); {common}"
        )
        if all(NO_LOGPROBS in r for r in reasons):
            raise LogprobsUnavailable(
                f"{message}; this server cannot score options: run with mode 'generate'"
            )
        raise OpenAIBackendError(message)

    def _answer_requests(self, requests: Sequence[VLMRequest], asks: Sequence[Ask]) -> list:
        """Results aligned with `requests`, answered as image jobs (each image encoded once,
        its questions to one replica, the first alone)."""
        by_image: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_image.setdefault(id(request.image), []).append(i)
        jobs, rows = [], {}
        for members in by_image.values():
            image = requests[members[0]].image
            job = ImageJob(
                hashlib.sha256(image.tobytes()).hexdigest(),
                lambda image=image: image,
                tuple(asks[i] for i in members),
            )
            jobs.append(job)
            rows[id(job)] = members
        results: list = [None] * len(requests)
        systems = {r.system for r in requests}
        system = systems.pop() if len(systems) == 1 else None
        for job, answers in self.answer_images(jobs, system=system):
            for i, answer in zip(rows[id(job)], answers, strict=True):
                results[i] = answer
        return results

    # --- Backend protocol ---------------------------------------------------------------------
    def generate(self, requests: list[VLMRequest], *, max_new_tokens: int) -> list[GenerateResult]:
        asks = [Ask(r.prompt, max_new_tokens=max_new_tokens) for r in requests]
        return self._answer_requests(requests, asks)

    def score(self, requests: list[VLMRequest], letters: list[str]) -> list[ScoreResult]:
        return self._answer_requests(requests, [Ask(r.prompt, tuple(letters)) for r in requests])

    def score_image(
        self, image: Image.Image, prompts: list[str], letters: list[list[str]]
    ) -> list[ScoreResult]:
        asks = [Ask(p, tuple(ls)) for p, ls in zip(prompts, letters, strict=True)]
        return self._answer_requests([VLMRequest(image, p) for p in prompts], asks)

    def generate_image(
        self, image: Image.Image, prompts: list[str], *, max_new_tokens: int
    ) -> list[GenerateResult]:
        asks = [Ask(p, max_new_tokens=max_new_tokens) for p in prompts]
        return self._answer_requests([VLMRequest(image, p) for p in prompts], asks)

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
