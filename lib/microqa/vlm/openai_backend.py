"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama) as a VLM backend.

Images travel as base64 data URLs in `image_url` content parts, downscaled on this side to the
resolution budget when one is given (so the server sees what the study asked for). Requests
run with bounded concurrency, a timeout, and retries with exponential backoff on 429, 5xx and
connection errors; other HTTP errors fail at once with the server's message.

`score` asks for one token with `logprobs: true, top_logprobs: 20`. Each option letter takes
the best of its token variants in the top list ("A", " A", "a" ...). A letter absent from the
list has probability at most the smallest listed one and at most the mass the list leaves
over; it is given min(that bound, leftover mass / number of absent letters), an upper-bound
share, not zero and not a guess. The letters are then renormalised. If no letter appears at
all, the model put no option among its top tokens: the result is empty (no answer, counted as
unanswered). A server that returns no logprobs raises LogprobsUnavailable: use mode "generate".
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from PIL import Image

from microqa.vlm.base import GenerateResult, ScoreResult, VLMRequest

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
TOP_LOGPROBS = 20


class OpenAIBackendError(RuntimeError):
    """The server refused or kept failing; the message names the server and the reason."""


class LogprobsUnavailable(OpenAIBackendError):
    """The server returned no token log-probabilities, so `score` mode cannot work."""


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


def letter_probabilities(top: list[dict[str, Any]], letters: list[str]) -> dict[str, float]:
    """Renormalised probabilities of `letters` from one position's top_logprobs (module doc)."""
    best: dict[str, float] = {}
    for entry in top:
        token = str(entry.get("token", "")).strip().strip("()").upper()
        if token in letters:
            best[token] = max(best.get(token, -math.inf), float(entry["logprob"]))
    if not best:
        return {}
    listed = [math.exp(float(e["logprob"])) for e in top]
    leftover = max(0.0, 1.0 - sum(listed))
    absent = [letter for letter in letters if letter not in best]
    mass = {letter: math.exp(lp) for letter, lp in best.items()}
    if absent:
        share = min(min(listed), leftover / len(absent))
        mass.update({letter: share for letter in absent})
    total = sum(mass.values())
    return {letter: mass[letter] / total for letter in letters}


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
        self.api_key = api_key
        self.image_budget = image_budget
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.weights = weights
        self.image_format = image_format
        self._local = threading.local()
        # The cache keys answers by weights identity; a server names its weights in /models.
        self.revision = revision or self._served_revision()

    # --- HTTP ------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):  # requests.Session is not thread-safe
            session = requests.Session()
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = session
        return self._local.session

    def _served_revision(self) -> str:
        try:
            response = self._session().get(f"{self.base_url}/models", timeout=self.timeout)
            response.raise_for_status()
            for entry in response.json().get("data", []):
                if entry.get("id") == self.model_id:
                    return f"{self.base_url}:{entry.get('root') or entry.get('id')}"
        except (requests.RequestException, ValueError):
            pass  # /models is optional in the protocol; the server URL still names the weights
        return f"{self.base_url}:{self.model_id}"

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._session().post(url, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise OpenAIBackendError(
                    f"{url} answered HTTP {response.status_code}: {response.text[:500]}"
                )
            return response.json()
        raise OpenAIBackendError(f"{url} failed after {self.retries + 1} attempts; last: {last}")

    def _payload(self, request: VLMRequest, **extra: Any) -> dict[str, Any]:
        image = fit_to_budget(request.image, self.image_budget)
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": image_data_url(image, fmt=self.image_format)},
                    },
                    {"type": "text", "text": request.prompt},
                ],
            }
        )
        return {"model": self.model_id, "messages": messages, "temperature": 0.0, **extra}

    def _map(self, fn, requests_: list[VLMRequest]) -> list:
        """Run `fn` over the requests, at most `concurrency` at a time. Latency is the batch's
        wall time shared equally (the contract), i.e. the throughput cost of a question."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(fn, requests_))
        share = (time.perf_counter() - start) / max(1, len(results))
        for result in results:
            result.latency_s = share
        return results

    # --- Backend protocol ---------------------------------------------------------------------
    def generate(self, requests: list[VLMRequest], *, max_new_tokens: int) -> list[GenerateResult]:
        def one(request: VLMRequest) -> GenerateResult:
            body = self._post(self._payload(request, max_tokens=max_new_tokens))
            text = body["choices"][0]["message"].get("content") or ""
            return GenerateResult(text=text, latency_s=0.0)

        return self._map(one, requests)

    def score(self, requests: list[VLMRequest], letters: list[str]) -> list[ScoreResult]:
        letters = [letter.upper() for letter in letters]

        def one(request: VLMRequest) -> ScoreResult:
            body = self._post(
                self._payload(request, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
            )
            choice = body["choices"][0]
            content = (choice.get("logprobs") or {}).get("content") or []
            if not content or not content[0].get("top_logprobs"):
                raise LogprobsUnavailable(
                    f"{self.base_url} returned no top_logprobs for model {self.model_id}; "
                    "this server cannot score options; run with mode 'generate' instead"
                )
            top = content[0]["top_logprobs"]
            return ScoreResult(
                probabilities=letter_probabilities(top, letters),
                latency_s=0.0,
                logprobs={str(e["token"]): float(e["logprob"]) for e in top},
            )

        return self._map(one, requests)

    def visual_tokens(self, image: Image.Image) -> int:
        raise NotImplementedError(
            "an OpenAI-compatible server does not report per-image visual tokens; "
            "measure them with the hf backend's processor"
        )
