"""One image pass for all questions about an image: the shared visual prefix (HF backend).

The chat template of every question about an image starts with the same tokens, up to and
including the image placeholder (and Qwen's <|vision_end|>): no per-question system text, the
question (with any CLIP context) after the image. So, per image:

1. the prefix is preprocessed and run once (image processor, vision tower, prefill), keeping
   its KV cache;
2. every question's own tokens (its suffix) are scored in batches against that cache, shared
   along the batch dimension (a view, not a copy: each layer's update concatenates the
   suffix onto it into a fresh tensor, so the prefix stays intact for the next batch);
   suffixes are right-padded and each row's logits are read at its last real token.

Positions continue from the prefix: plain 0..n for LLaVA-NeXT's Mistral; for Qwen-VL the
multimodal rope gives text after the image the position `prefix max + 1 + j` on all three
axes, which is `P + j + rope_deltas` with the deltas the model computed for the prefix
(transformers' own incremental-decoding rule). Tokenising the whole prompt and cutting it
after the image gives exactly the plain path's tokens (the image placeholder is a special
token, so nothing merges across the cut); this is checked per prompt.
"""

from __future__ import annotations

import copy
import time

from PIL import Image

from microqa.vlm.base import ScoreResult

SLOT = "\x00question\x00"


class PrefixError(ValueError):
    """A prompt whose template does not start with the shared image prefix."""


def prompt_texts(backend, prompts: list[str]) -> list[str]:
    """The chat-templated text of each prompt: the template is rendered once per backend
    around a placeholder (it inserts the question verbatim), not once per question."""
    from microqa.vlm.base import VLMRequest

    parts = getattr(backend, "_template_parts", None)
    if parts is None:
        rendered = backend._prompt_text(VLMRequest(None, SLOT))
        if rendered.count(SLOT) != 1:
            raise PrefixError(f"{backend.model_id}'s chat template does not show the question once")
        parts = backend._template_parts = tuple(rendered.split(SLOT))
    return [parts[0] + prompt + parts[1] for prompt in prompts]


def split_prompt(backend, text: str) -> tuple[str, list[int]]:
    """(prefix text ending with the image, the question's own token ids after it)."""
    tokenizer = backend.processor.tokenizer
    marker = tokenizer.convert_ids_to_tokens(backend.image_token_id)
    ids = tokenizer(text)["input_ids"]
    if backend.image_token_id not in ids or marker not in text:
        raise PrefixError(f"no image placeholder in the prompt of {backend.model_id}")
    cut = ids.index(backend.image_token_id) + 1
    end = text.index(marker) + len(marker)
    vision_end = getattr(backend.model.config, "vision_end_token_id", None)
    if vision_end is not None and cut < len(ids) and ids[cut] == vision_end:
        cut += 1
        end_marker = tokenizer.convert_ids_to_tokens(vision_end)
        if not text[end:].startswith(end_marker):
            raise PrefixError(f"unexpected text after the image in {backend.model_id}'s template")
        end += len(end_marker)
    prefix_text = text[:end]
    checked = backend.__dict__.setdefault("_prefix_ids", {})
    if prefix_text not in checked:
        checked[prefix_text] = tokenizer(prefix_text)["input_ids"]
    if checked[prefix_text] != ids[:cut] or cut == len(ids):
        raise PrefixError(f"{backend.model_id}'s prompt does not split after the image")
    return prefix_text, ids[cut:]


def _shared(cache, batch: int):
    """A cache whose layers show the prefix's keys and values `batch` times (views)."""
    shared = copy.copy(cache)
    shared.layers = []
    for layer in cache.layers:
        view = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            view.keys = layer.keys.expand(batch, -1, -1, -1)
            view.values = layer.values.expand(batch, -1, -1, -1)
        shared.layers.append(view)
    return shared


def prefill(backend, image: Image.Image, prefix_text: str):
    """Run the image prefix once: (KV cache, prefix length, rope deltas or None, visual tokens)."""
    import torch

    inputs = backend.processor(
        text=[prefix_text], images=[[image]], return_tensors="pt", **backend._images_kwargs
    ).to(backend.device)
    with torch.inference_mode():
        output = backend.model(**inputs, use_cache=True, logits_to_keep=1)
    cache = getattr(output, "cache", None) or output.past_key_values
    deltas = None
    if backend.family is not None and backend.family.is_qwen:
        deltas = backend.model.model.rope_deltas  # set by this prefill, shape (1, 1)
    length = inputs["input_ids"].shape[1]
    visual = int((inputs["input_ids"] == backend.image_token_id).sum())
    return cache, length, deltas, visual


def suffix_logits(backend, cache, length: int, deltas, suffixes: list[list[int]]):
    """Next-token logits after each suffix, continuing the prefix in `cache`."""
    import torch

    batch, longest = len(suffixes), max(len(s) for s in suffixes)
    pad = backend.processor.tokenizer.pad_token_id or 0
    ids = torch.full((batch, longest), pad, dtype=torch.long)
    mask = torch.zeros((batch, length + longest), dtype=torch.long)
    mask[:, :length] = 1
    for row, suffix in enumerate(suffixes):
        ids[row, : len(suffix)] = torch.tensor(suffix)
        mask[row, length : length + len(suffix)] = 1
    positions = (length + torch.arange(longest)).expand(batch, longest)
    if deltas is not None:  # Qwen-VL multimodal rope: text continues on all three axes
        positions = (positions + deltas.cpu()).unsqueeze(0).expand(3, batch, longest)
    device = backend.device
    with torch.inference_mode():
        hidden = backend.model.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=_shared(cache, batch),
            use_cache=True,
        ).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in suffixes], device=hidden.device)
        rows = hidden[torch.arange(batch, device=hidden.device), last]
        return backend.model.get_output_embeddings()(rows)


def score_image(
    backend, image: Image.Image, prompts: list[str], letters: list[list[str]]
) -> list[ScoreResult]:
    """Every question about `image` from one image pass (see the module docstring)."""
    start = time.perf_counter()
    splits = [split_prompt(backend, text) for text in prompt_texts(backend, prompts)]
    prefix_texts = {text for text, _ in splits}
    if len(prefix_texts) != 1:
        raise PrefixError(f"the prompts of one image do not share a prefix in {backend.model_id}")
    cache, length, deltas, visual = prefill(backend, image, prefix_texts.pop())
    import torch

    # Batches of similar length: suffixes range from a bare question to one with three
    # neighbours' annotations, and padding a short one to the longest is wasted work.
    order = sorted(range(len(splits)), key=lambda i: len(splits[i][1]))
    rows = [None] * len(splits)
    for begin in range(0, len(order), backend.prefix_batch):
        chunk = order[begin : begin + backend.prefix_batch]
        logits = suffix_logits(backend, cache, length, deltas, [splits[i][1] for i in chunk])
        for i, row in zip(chunk, logits, strict=True):
            rows[i] = row
    latency = (time.perf_counter() - start) / len(prompts)
    return backend.letter_results(torch.stack(rows), letters, latency, [visual] * len(prompts))
