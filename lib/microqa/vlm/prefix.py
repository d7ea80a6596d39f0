"""One image pass for all questions about an image: the shared visual prefix (HF backend).

The chat template of every question about an image starts with the same tokens, up to and
including the image placeholder (and Qwen's <|vision_end|>): no per-question system text, the
question (with any CLIP context) after the image. So, per image:

1. the prefix is preprocessed and run once (image processor, vision tower, prefill), keeping
   its KV cache;
2. the questions' own tokens (their suffixes) share text too: every task and rotation asked
   with one CLIP context starts with that context, every rotation of a question with its
   stem. The suffixes' token ids form a tree (`plan`: a radix tree, where a shared segment is
   kept only when prefilling it once saves more tokens than it costs a forward call); each
   shared segment is prefilled once on top of its parent's KV cache, and only the distinct
   tails (options and the answer instruction) are scored, in batches against that cache;
3. a cache is shared along the batch dimension as a view, not a copy: each layer's update
   concatenates the new tokens onto it into a fresh tensor, so a parent's cache stays intact
   for its next child or batch. Tails are right-padded and each row's logits are read at its
   last real token.

Generate mode (`generate_image`) decodes the questions greedily on the same prefix, in batches
of similar length: each row keeps its own positions and its padding is masked out, so it writes
token for token what `model.generate` writes alone (models whose generation config changes
greedy search, `GREEDY_NEUTRAL`, keep `model.generate`).

Positions continue from the prefix: plain 0..n for LLaVA-NeXT's Mistral; for Qwen-VL the
multimodal rope gives text after the image the position `prefix max + 1 + j` on all three
axes, which is `P + j + rope_deltas` with the deltas the model computed for the prefix
(transformers' own incremental-decoding rule). Tokenising the whole prompt and cutting it
after the image gives exactly the plain path's tokens (the image placeholder is a special
token, so nothing merges across the cut); this is checked per prompt. The suffixes are cut
further only on their token ids, never by re-tokenising text pieces, so every question runs
exactly the tokens of its plain prompt.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

from PIL import Image

from microqa.vlm.base import ScoreResult

SLOT = "\x00question\x00"
# A shared segment gets its own prefill when that saves at least this many suffix tokens
# (its length times the extra children that would otherwise each run it): below that, the
# cost of one more forward call outweighs the tokens saved.
MIN_SAVED_TOKENS = 24


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


@dataclass
class Segment:
    """Tokens shared by several suffixes (`tokens`), then what follows them: `tails`
    (question index, the rest of its tokens) scored in batches, and deeper `segments`."""

    tokens: list[int]
    tails: list[tuple[int, list[int]]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


def _common_length(items: list[tuple[int, list[int]]]) -> int:
    """Length of the common prefix of the items' token ids, leaving each at least one token
    (its last token's logits are the answer)."""
    shortest = min(len(ids) for _, ids in items)
    first = items[0][1]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for _, ids in items):
        length += 1
    return length


def _branch(tokens: list[int], items: list[tuple[int, list[int]]]) -> Segment:
    """The radix tree of `items` (all starting after `tokens`), its branches grouped by their
    next token; a branch whose shared segment does not pay for its own forward call is
    dissolved: its tokens go back into each child."""
    node = Segment(tokens)
    groups: dict[int, list[tuple[int, list[int]]]] = {}
    for index, ids in items:
        groups.setdefault(ids[0], []).append((index, ids))
    for group in groups.values():
        shared = _common_length(group) if len(group) > 1 else 0
        if shared == 0:
            node.tails += group
            continue
        child = _branch(group[0][1][:shared], [(i, ids[shared:]) for i, ids in group])
        children = len(child.tails) + len(child.segments)
        if shared * (children - 1) >= MIN_SAVED_TOKENS:
            node.segments.append(child)
        else:  # dissolve: the child's tails and segments carry its tokens themselves
            node.tails += [(i, child.tokens + ids) for i, ids in child.tails]
            node.segments += [
                Segment(child.tokens + g.tokens, g.tails, g.segments) for g in child.segments
            ]
    return node


def plan(suffixes: list[list[int]]) -> Segment:
    """How the suffixes of one image are run: the root (no tokens of its own: the image
    prefix) with its tails and shared segments."""
    if any(not ids for ids in suffixes):
        raise PrefixError("a question has no tokens after the image")
    return _branch([], list(enumerate(suffixes)))


def planned_tokens(segment: Segment) -> int:
    """Tokens the language model runs for a plan (every segment once, every tail once)."""
    own = len(segment.tokens) + sum(len(ids) for _, ids in segment.tails)
    return own + sum(planned_tokens(child) for child in segment.segments)


def _padded(backend, length: int, suffixes: list[list[int]]):
    """The right-padded token ids of `suffixes` (batch x longest), and the attention mask over
    a prefix of `length` and them (the padding masked out)."""
    import torch

    batch, longest = len(suffixes), max(len(s) for s in suffixes)
    pad = backend.processor.tokenizer.pad_token_id or 0
    ids = torch.full((batch, longest), pad, dtype=torch.long)
    mask = torch.zeros((batch, length + longest), dtype=torch.long)
    mask[:, :length] = 1
    for row, suffix in enumerate(suffixes):
        ids[row, : len(suffix)] = torch.tensor(suffix)
        mask[row, length : length + len(suffix)] = 1
    return ids, mask


def _step(backend, cache, mask, tokens, positions, deltas):
    """One forward call of new `tokens` (batch x n) at `positions` onto `cache` (extended in
    place as transformers' caches are), attending where `mask` (batch x cache+n) is 1: the
    new tokens' hidden states."""
    import torch

    if deltas is not None:  # Qwen-VL multimodal rope: text continues on all three axes
        positions = (positions + deltas.cpu()).unsqueeze(0).expand(3, *positions.shape)
    device = backend.device
    with torch.inference_mode():
        return backend.model.model(
            input_ids=tokens.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        ).last_hidden_state


def _forward(backend, cache, length: int, deltas, suffixes: list[list[int]]):
    """Run right-padded `suffixes` on top of `cache` (length `length`): (hidden states, the
    extended cache). Positions continue from the cache's length."""
    import torch

    ids, mask = _padded(backend, length, suffixes)
    batch, longest = ids.shape
    extended = _shared(cache, batch)
    positions = (length + torch.arange(longest)).expand(batch, longest)
    return _step(backend, extended, mask, ids, positions, deltas), extended


def extend(backend, cache, length: int, deltas, tokens: list[int]):
    """A new cache: `cache` followed by `tokens` (the parent's cache is left intact)."""
    return _forward(backend, cache, length, deltas, [tokens])[1]


def suffix_logits(backend, cache, length: int, deltas, suffixes: list[list[int]]):
    """Next-token logits after each suffix, continuing the prefix in `cache`."""
    import torch

    hidden, _ = _forward(backend, cache, length, deltas, suffixes)
    with torch.inference_mode():
        last = torch.tensor([len(s) - 1 for s in suffixes], device=hidden.device)
        rows = hidden[torch.arange(len(suffixes), device=hidden.device), last]
        return backend.model.get_output_embeddings()(rows)


def _score_segment(backend, segment: Segment, cache, length: int, deltas, rows: list) -> None:
    """Fill `rows[i]` with the logits of every question under `segment` (whose tokens are
    already in `cache`)."""
    for child in segment.segments:
        child_cache = extend(backend, cache, length, deltas, child.tokens)
        _score_segment(backend, child, child_cache, length + len(child.tokens), deltas, rows)
        del child_cache
    # Batches of similar length: tails range from a bare answer instruction to a question
    # with three neighbours' annotations, and padding a short one to the longest is wasted.
    tails = sorted(segment.tails, key=lambda item: len(item[1]))
    for begin in range(0, len(tails), backend.prefix_batch):
        chunk = tails[begin : begin + backend.prefix_batch]
        logits = suffix_logits(backend, cache, length, deltas, [ids for _, ids in chunk])
        for (index, _), row in zip(chunk, logits, strict=True):
            rows[index] = row


def prefilled(backend, image: Image.Image, prompts: list[str]):
    """Each prompt's token ids after the image, and `prefill` of the image prefix they share."""
    splits = [split_prompt(backend, text) for text in prompt_texts(backend, prompts)]
    prefix_texts = {text for text, _ in splits}
    if len(prefix_texts) != 1:
        raise PrefixError(f"the prompts of one image do not share a prefix in {backend.model_id}")
    return [ids for _, ids in splits], prefill(backend, image, prefix_texts.pop())


def score_image(
    backend, image: Image.Image, prompts: list[str], letters: list[list[str]]
) -> list[ScoreResult]:
    """Every question about `image` from one image pass (see the module docstring)."""
    import torch

    start = time.perf_counter()
    suffixes, (cache, length, deltas, visual) = prefilled(backend, image, prompts)
    rows = [None] * len(suffixes)
    _score_segment(backend, plan(suffixes), cache, length, deltas, rows)
    latency = (time.perf_counter() - start) / len(prompts)
    return backend.letter_results(torch.stack(rows), letters, latency, [visual] * len(prompts))


# --------------------------------------------------------------------------- generate mode

# Settings of a model's generation config that would make transformers' greedy search more
# than argmax decoding up to an end token (a logits processor, a stop rule, beams), with their
# neutral values (None is transformers' default; checkpoints often write the neutral number).
# The shared-prefix decoder implements plain greedy search only, so a model setting any of
# them otherwise answers through `model.generate`.
GREEDY_NEUTRAL = {
    "num_beams": (None, 1),
    "penalty_alpha": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "encoder_repetition_penalty": (None, 1, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None, []),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "sequence_bias": (None, {}),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1, 1.0),
    "stop_strings": (None, []),
    "watermarking_config": (None,),
}


def plain_greedy(backend) -> bool:
    """Whether the model's greedy search is plain argmax decoding up to an end token (its
    generation config keeps every GREEDY_NEUTRAL setting neutral); when it is not, says once
    per backend which settings send its generate mode through `model.generate`."""
    config = backend.model.generation_config
    changers = [
        n for n, neutral in GREEDY_NEUTRAL.items() if getattr(config, n, None) not in neutral
    ]
    if changers and not backend.__dict__.get("_greedy_announced"):
        backend._greedy_announced = True
        logging.getLogger(__name__).warning(
            "%s: its generation config sets %s, so generate mode answers through "
            "model.generate (the image prefix prefilled again for every question)",
            backend.model_id,
            ", ".join(changers),
        )
    return not changers


def _end_tokens(backend) -> set[int]:
    eos = backend.model.generation_config.eos_token_id
    if eos is None:
        eos = backend.processor.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list | tuple) else [eos]) - {None}


def greedy(backend, cache, length: int, deltas, suffixes: list[list[int]], max_new_tokens: int):
    """Greedy continuations of right-padded `suffixes` on top of the prefix in `cache`: the
    new token ids of each row, up to and including its end token. Every row keeps its own
    positions (prefix, its suffix, then its new tokens), and the padding after a short suffix
    is masked out, so each row decodes as it would alone."""
    import torch

    ids, mask = _padded(backend, length, suffixes)
    (batch, longest), pad = ids.shape, backend.processor.tokenizer.pad_token_id or 0
    lengths = torch.tensor([len(s) for s in suffixes])
    extended = _shared(cache, batch)
    positions = (length + torch.arange(longest)).expand(batch, longest)
    hidden = _step(backend, extended, mask, ids, positions, deltas)
    last = hidden[torch.arange(batch, device=hidden.device), (lengths - 1).to(hidden.device)]
    head, ends = backend.model.get_output_embeddings(), _end_tokens(backend)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        with torch.inference_mode():
            chosen = head(last).argmax(dim=-1).cpu()
        for row in range(batch):
            if not done[row]:
                out[row].append(int(chosen[row]))
                done[row] = int(chosen[row]) in ends
        if all(done) or step == max_new_tokens - 1:
            break
        tokens = torch.where(torch.tensor(done), pad, chosen).unsqueeze(1)
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=torch.long)], dim=1)
        hidden = _step(backend, extended, mask, tokens, (length + lengths + step)[:, None], deltas)
        last = hidden[:, -1]
    return out


def generate_image(backend, image: Image.Image, prompts: list[str], max_new_tokens: int):
    """Greedy answers to every question about `image` from one image pass: the prefix is
    prefilled once and the questions' suffixes decoded on top of it in batches of similar
    length (`backend.batch_size`)."""
    from microqa.vlm.base import GenerateResult

    start = time.perf_counter()
    suffixes, (cache, length, deltas, visual) = prefilled(backend, image, prompts)
    new_tokens: list = [None] * len(suffixes)
    order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
    for begin in range(0, len(order), backend.batch_size):
        chunk = order[begin : begin + backend.batch_size]
        decoded = greedy(
            backend, cache, length, deltas, [suffixes[i] for i in chunk], max_new_tokens
        )
        for index, tokens in zip(chunk, decoded, strict=True):
            new_tokens[index] = tokens
    texts = backend.processor.batch_decode(new_tokens, skip_special_tokens=True)
    latency = (time.perf_counter() - start) / len(prompts)
    return [GenerateResult(text=t, latency_s=latency, visual_tokens=visual) for t in texts]
