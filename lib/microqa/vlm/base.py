"""What every VLM backend takes and returns (the contract between questions/runner and backends)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class VLMRequest:
    """One question about one image. `prompt` is the user text; the backend applies the chat
    template of its model and places the image where that model expects it."""

    image: Image.Image
    prompt: str
    system: str | None = None


@dataclass
class GenerateResult:
    text: str
    latency_s: float  # wall seconds attributed to this request (batch time / batch size)
    visual_tokens: int | None = None
    error: str | None = None  # why no answer came back (a server's failed request); else None


@dataclass
class ScoreResult:
    """Probability over the option letters from the next-token logits (renormalised over the
    letters), plus the raw log-probabilities for inspection."""

    probabilities: dict[str, float]
    latency_s: float
    logprobs: dict[str, float] = field(default_factory=dict)
    visual_tokens: int | None = None
    # Total probability, over the whole vocabulary, of every single-token spelling of every
    # option letter at the answer position: how much the model committed to answering at all.
    letter_mass: float | None = None
    error: str | None = None  # why no answer came back (a server's failed request); else None


@dataclass(frozen=True)
class Ask:
    """One question of an `ImageJob`: scored over `letters`, or generated (`max_new_tokens`)."""

    prompt: str
    letters: tuple[str, ...] = ()
    max_new_tokens: int | None = None  # None: scored


@dataclass(frozen=True)
class ImageJob:
    """Every pending question about one image, for a backend that keeps many images in flight
    (`answer_images`). `load` is called when the image is first needed (so only the images in
    flight are in memory) and returns None when the image cannot be decoded (the caller has
    recorded why); `key` (the image's sha256) routes it to one server replica."""

    key: str
    load: Callable[[], Image.Image | None]
    asks: tuple[Ask, ...]


class Backend(Protocol):
    name: str  # "hf" or "openai"
    model_id: str  # Hugging Face id, local directory, or the server's model name
    revision: str  # weights identity for the answer cache (commit, file hash, "random:<hash>")
    weights: str  # "pretrained" or "random" (offline tiny / random substitutes)

    def generate(self, requests: list[VLMRequest], *, max_new_tokens: int) -> list[GenerateResult]:
        """Greedy generation, batched where the backend can."""
        ...

    def score(self, requests: list[VLMRequest], letters: list[str]) -> list[ScoreResult]:
        """One forward pass per request: next-token distribution over `letters` after the prompt
        (which ends by asking for the letter). Raises NotImplementedError where impossible."""
        ...

    # Image-major answering (the runner's path): every pending question about ONE image at
    # once, so a backend can preprocess the image, run its vision tower and prefill the shared
    # image prefix once (hf), or send the questions consecutively with a byte-identical image
    # part so a server's prefix cache reuses it (openai). Results align with `prompts`.
    def score_image(
        self, image: Image.Image, prompts: list[str], letters: list[list[str]]
    ) -> list[ScoreResult]:
        """Next-token distribution over each prompt's own option letters."""
        ...

    def generate_image(
        self, image: Image.Image, prompts: list[str], *, max_new_tokens: int
    ) -> list[GenerateResult]:
        """Greedy generation for each prompt about the same image."""
        ...

    def visual_tokens(self, image: Image.Image) -> int:
        """How many tokens this image costs the model at its configured resolution budget."""
        ...


def answer_image(
    backend: Backend, image: Image.Image, prompts: list[str], letters: list[list[str]]
) -> list[ScoreResult]:
    """`backend.score_image`, or, for a backend that predates it, its `score` per letter set."""
    if hasattr(backend, "score_image"):
        return backend.score_image(image, prompts, letters)
    results: list[ScoreResult | None] = [None] * len(prompts)
    for letter_set in dict.fromkeys(tuple(x) for x in letters):
        rows = [i for i, x in enumerate(letters) if tuple(x) == letter_set]
        answers = backend.score([VLMRequest(image, prompts[i]) for i in rows], list(letter_set))
        for i, answer in zip(rows, answers, strict=True):
            results[i] = answer
    return results


def generate_image(
    backend: Backend, image: Image.Image, prompts: list[str], max_new_tokens: int
) -> list[GenerateResult]:
    """`backend.generate_image`, or `generate` for a backend that predates it."""
    if hasattr(backend, "generate_image"):
        return backend.generate_image(image, prompts, max_new_tokens=max_new_tokens)
    requests = [VLMRequest(image, prompt) for prompt in prompts]
    return backend.generate(requests, max_new_tokens=max_new_tokens)
