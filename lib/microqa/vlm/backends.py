"""`load_backend(backend, model, **options)`: the one way the study opens a VLM.

The backend modules are imported lazily, so the OpenAI-compatible path never imports torch or
transformers.

Options: base_url, api_key (openai); image_budget (max pixels per image), batch_size, device,
dtype, shared_prefix, prefix_batch (hf); concurrency, timeout (openai). Options a backend
does not use are ignored by it.
"""

from __future__ import annotations

from typing import Any

from microqa.vlm.base import Backend

BACKENDS = ("hf", "openai")
HF_OPTIONS = {
    "image_budget",
    "batch_size",
    "device",
    "dtype",
    "revision",
    "shared_prefix",
    "prefix_batch",
}
OPENAI_OPTIONS = {
    "base_url",
    "api_key",
    "image_budget",
    "concurrency",
    "timeout",
    "retries",
    "backoff_s",
    "revision",
    "weights",
    "image_format",
}


def load_backend(backend: str, model: str, **options: Any) -> Backend:
    options = {k: v for k, v in options.items() if v is not None}
    if backend == "hf":
        from microqa.vlm.hf import HFBackend

        return HFBackend(model, **{k: v for k, v in options.items() if k in HF_OPTIONS})
    if backend == "openai":
        from microqa.vlm.openai_backend import OpenAIBackend

        return OpenAIBackend(model, **{k: v for k, v in options.items() if k in OPENAI_OPTIONS})
    raise ValueError(f"unknown VLM backend {backend!r}; choose one of {BACKENDS}")
