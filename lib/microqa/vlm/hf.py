"""The transformers backend: AutoProcessor + AutoModelForImageTextToText, batched.

One code path for a hub id and a local directory (the offline tiny models are loaded exactly
like real checkpoints). Family facts (id matching, real processor settings, default image
budget) live in `microqa.vlm.families`; the budget is resolved there once and applied here:

- Qwen-VL (Qwen3-VL, Qwen2.5-VL, Qwen2-VL): the budget is the processor's max pixels.
- LLaVA-NeXT (llava-v1.6-*): must load as LlavaNextForConditionalGeneration (loading it with
  the LLaVA-1.5 class was the earlier study's defect #1; we check and raise). Its processor
  returns `image_sizes` and expands `<image>` to the anyres feature count. The budget keeps
  only the grid resolutions with height*width <= budget (in both the processor and the model
  config, which must agree); by default the checkpoint's whole grid.

Running with real weights (GPU): `HFBackend("Qwen/Qwen3-VL-8B-Instruct")` or
`HFBackend("llava-hf/llava-v1.6-mistral-7b-hf")` (or `load_backend("hf", ...)`, or a local
snapshot directory) picks CUDA and bf16 by itself; about 18 GB of GPU memory for the 8B model.
Pass `revision=` to pin a hub commit; the answer cache keys on the resolved commit hash.

Scoring reads the next-token logits after the chat-templated prompt. A letter can be a token in
several spellings ("A" and "▁A" / "ĠA"); its log-probability is the logsumexp over its
single-token spellings, then the letters are renormalised with a softmax; the letter mass is
the total probability of all those spellings.

`score_image` (the runner's path) answers every question about one image from one image pass:
the chat template puts everything up to and including the image tokens first, identical for
all questions (the per-question text, CLIP context included, comes after the image), so the
image is preprocessed once, the vision tower runs once and the shared prefix is prefilled once;
the text the questions share after it (a CLIP context, a question stem) is prefilled once on
top, and only each question's distinct tail is scored, in batches (see `microqa.vlm.prefix`).
`shared_prefix=False` keeps the plain per-question forward pass. `generate_image` (free-text
answers) decodes the questions greedily on the same shared prefix; with `shared_prefix=False`,
or a model whose greedy search is not plain, `model.generate` answers them, the image still
preprocessed once for all of them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from microqa.data.images import to_rgb
from microqa.vlm import families, tiny
from microqa.vlm.base import GenerateResult, ScoreResult, VLMRequest

DEFAULT_BATCH_SIZE = 8
# Question suffixes scored together against one image prefix (sorted by length, so batches
# carry little padding): they share the prefix's KV cache, so a batch costs its own tokens.
DEFAULT_PREFIX_BATCH = 12


class WrongModelClassError(TypeError):
    """A checkpoint would be loaded with a class that does not match its architecture."""


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _hash_weights(model_dir: Path) -> str:
    """sha256 over the directory's weight and config files (name + content)."""
    digest = hashlib.sha256()
    patterns = ("*.safetensors", "*.bin", "config.json")
    files = sorted({p for pattern in patterns for p in model_dir.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def resolve_revision(model: str, config, revision: str | None = None) -> str:
    """The weights' identity for the answer cache.

    Hub checkpoint: its commit hash. Local directory: the snapshot hash when the directory is a
    hub-cache snapshot, else a hash of its weight files; tiny models get "random:<hash>".
    """
    path = Path(model)
    if path.is_dir():
        if tiny.is_tiny(path):
            return f"random:{_hash_weights(path)}"
        parent = path.resolve().parent
        if parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.resolve().name):
            return path.resolve().name
        return f"sha256:{_hash_weights(path)}"
    commit = getattr(config, "_commit_hash", None)
    return commit or revision or "unknown"


class HFBackend:
    """Backend protocol (see microqa.vlm.base) over transformers."""

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        image_budget: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        shared_prefix: bool = True,
        prefix_batch: int = DEFAULT_PREFIX_BATCH,
    ):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.model_id = str(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 halves memory and is the checkpoints' own dtype on GPUs; CPUs get fp32
        # (bf16 matmuls on CPU are slow and less exact).
        if dtype and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16', 'float32'")
        self.dtype = (
            getattr(torch, dtype)
            if dtype
            else (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        )
        config = AutoConfig.from_pretrained(self.model_id, revision=revision)
        self.model_type = config.model_type
        self.family = families.family_of(model_type=config.model_type)
        check_model_class(self.model_id, config)
        self.processor = AutoProcessor.from_pretrained(self.model_id, revision=revision)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues at the end
        # device_map loads the weights straight onto the device (no full copy in CPU memory)
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_id, revision=revision, dtype=self.dtype, device_map=self.device
        ).eval()
        check_model_class(self.model_id, self.model.config, type(self.model).__name__)
        self.revision = resolve_revision(self.model_id, self.model.config, revision)
        self.weights = "random" if tiny.is_tiny(Path(self.model_id)) else "pretrained"
        self.image_budget = self._apply_budget(image_budget)
        self.image_token_id = self._image_token_id()
        self._letter_ids: dict[tuple[str, ...], dict[str, list[int]]] = {}
        if prefix_batch < 1:
            raise ValueError(f"prefix_batch must be >= 1, got {prefix_batch}")
        self.shared_prefix, self.prefix_batch = shared_prefix, prefix_batch

    # ---- family specifics -------------------------------------------------------------
    def _apply_budget(self, image_budget: int | None) -> int | None:
        """Apply the budget `families.resolve_budget` resolves; returns the resolved value."""
        family = self.family
        if family is None:
            if image_budget is not None:
                raise ValueError(
                    f"image_budget is implemented for Qwen-VL and LLaVA-NeXT models, not for "
                    f"{self.model_id} (model_type {self.model_type!r})"
                )
            self._images_kwargs = {}
            return None
        if family.is_qwen:
            budget = families.resolve_budget(family, image_budget)
            size = self.processor.image_processor.size
            min_pixels = size["shortest_edge"] if "shortest_edge" in size else 3136
            self._images_kwargs = {
                "size": {"shortest_edge": min(min_pixels, budget), "longest_edge": budget}
            }
            return budget
        native = self.model.config.image_grid_pinpoints
        budget = families.resolve_budget(family, image_budget, native)
        grid = families.restrict_grid(native, budget)
        self.model.config.image_grid_pinpoints = grid
        self.processor.image_processor.image_grid_pinpoints = grid
        self._images_kwargs = {}
        return budget

    def _image_token_id(self) -> int:
        token_id = getattr(self.processor, "image_token_id", None)
        if token_id is None:
            token = getattr(self.processor, "image_token", None)
            token_id = self.processor.tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None:
            raise ValueError(f"cannot find the image placeholder token of {self.model_id}")
        return int(token_id)

    # ---- inputs -----------------------------------------------------------------------
    def _prompt_text(self, request: VLMRequest) -> str:
        messages = []
        if request.system:
            system = [{"type": "text", "text": request.system}]
            messages.append({"role": "system", "content": system})
        messages.append(
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": request.prompt}],
            }
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def _inputs(self, batch: Sequence[VLMRequest]):
        texts = [self._prompt_text(request) for request in batch]
        pictures = [to_rgb(request.image) for request in batch]
        if len(batch) > 1 and self.family is not None and all(p is pictures[0] for p in pictures):
            inputs = self._one_image_inputs(texts, pictures[0])
        else:
            inputs = self.processor(
                text=texts,
                images=[[p] for p in pictures],
                padding=True,
                return_tensors="pt",
                **self._images_kwargs,
            )
        return inputs.to(self.device)

    _TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids"})  # from tokens

    def _one_image_inputs(self, texts: list[str], image: Image.Image):
        """The processor's own inputs for several questions about ONE image, preprocessed
        once, not once per question: Qwen-VL and LLaVA-NeXT stack each image's arrays along
        the first axis and expand its placeholder alike in every prompt, so the arrays are
        repeated and the prompts tokenised with that expansion (a test compares the tensors)."""
        import torch
        from transformers import BatchFeature

        one = self.processor(
            text=texts[:1], images=[[image]], return_tensors="pt", **self._images_kwargs
        )
        placeholder = self.processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        if any(text.count(placeholder) != 1 for text in texts):
            raise ValueError(f"{self.model_id}: expected one image placeholder per prompt")
        expanded = placeholder * int((one["input_ids"][0] == self.image_token_id).sum())
        prompts = [text.replace(placeholder, expanded) for text in texts]
        data = dict(self.processor.tokenizer(prompts, padding=True))
        if "mm_token_type_ids" in one:
            data["mm_token_type_ids"] = self.processor.create_mm_token_type_ids(data["input_ids"])
        data = {k: torch.tensor(v) for k, v in data.items() if k in one}
        for key, value in one.items():
            if key not in self._TEXT_KEYS:
                data[key] = torch.cat([value] * len(texts))
        return BatchFeature(data)

    def _prefetched(self, requests: Sequence[VLMRequest]) -> Iterator[tuple[Sequence, object]]:
        """(batch, model inputs) pairs. On a GPU the next batch is decoded and preprocessed
        in a background thread while the GPU runs the current one, so the image processor
        does not starve it. On a CPU the two would share the same cores and fight for the GIL:
        measured on 2 cores with the tiny Qwen3-VL, 111 questions/s in turn against 93
        overlapped, so there they simply take turns."""
        batches = list(_chunks(requests, self.batch_size))
        if not self.device.startswith("cuda") or len(batches) <= 1:
            for batch in batches:
                yield batch, self._inputs(batch)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm-preprocess") as pool:
            pending = pool.submit(self._inputs, batches[0])
            for i, batch in enumerate(batches):
                inputs = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(self._inputs, batches[i + 1])
                yield batch, inputs

    def _visual_counts(self, inputs) -> list[int]:
        return (inputs["input_ids"] == self.image_token_id).sum(dim=1).tolist()

    def _greedy(self, inputs, max_new_tokens: int, **extra):
        import torch

        pad = self.processor.tokenizer.pad_token_id
        with torch.inference_mode():
            return self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                **extra,
            )

    def _next_token_logits(self, inputs):
        """One forward pass over the prompts; logits of the next token only. Left padding
        needs explicit positions for LLaVA-NeXT's Mistral (Qwen-VL derives its multimodal
        rope positions from the attention mask itself), so a batched row scores exactly as
        it would alone."""
        import torch

        extra = {}
        if not (self.family and self.family.is_qwen):
            extra["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            output = self.model(**inputs, **extra, use_cache=False, logits_to_keep=1)
        return output.logits[:, -1, :]

    # ---- protocol ---------------------------------------------------------------------
    def generate(self, requests: list[VLMRequest], *, max_new_tokens: int) -> list[GenerateResult]:
        results: list[GenerateResult] = []
        start = time.perf_counter()
        for batch, inputs in self._prefetched(requests):
            output = self._greedy(inputs, max_new_tokens)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
            latency, start = (time.perf_counter() - start) / len(batch), time.perf_counter()
            counts = self._visual_counts(inputs)
            results += [
                GenerateResult(text=text, latency_s=latency, visual_tokens=count)
                for text, count in zip(texts, counts, strict=True)
            ]
        return results

    def score(self, requests: list[VLMRequest], letters: list[str]) -> list[ScoreResult]:
        return self._score_plain(requests, [list(letters)] * len(requests))

    def _score_plain(
        self, requests: Sequence[VLMRequest], letters: Sequence[Sequence[str]]
    ) -> list[ScoreResult]:
        """One plain forward pass per question (batched): the image is preprocessed, encoded
        and prefilled again for every question."""
        results: list[ScoreResult] = []
        start, done = time.perf_counter(), 0
        for batch, inputs in self._prefetched(requests):
            logits = self._next_token_logits(inputs)
            rows = letters[done : done + len(batch)]
            done += len(batch)
            latency, start = (time.perf_counter() - start) / len(batch), time.perf_counter()
            results += self.letter_results(logits, rows, latency, self._visual_counts(inputs))
        return results

    def letter_results(self, logits, letters, latency: float, visual_tokens) -> list[ScoreResult]:
        """ScoreResults from next-token logits (one row per question, each with its letters)."""
        import torch

        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        results = []
        for row, (row_letters, count) in enumerate(zip(letters, visual_tokens, strict=True)):
            variants = self.letter_token_ids(tuple(row_letters))
            per_letter = torch.stack(
                [torch.logsumexp(logprobs[row, variants[x]], dim=-1) for x in row_letters]
            )
            probabilities = torch.softmax(per_letter, dim=-1)
            results.append(
                ScoreResult(
                    probabilities={
                        x: float(p) for x, p in zip(row_letters, probabilities, strict=True)
                    },
                    logprobs={x: float(v) for x, v in zip(row_letters, per_letter, strict=True)},
                    latency_s=latency,
                    visual_tokens=int(count),
                    letter_mass=float(torch.logsumexp(per_letter, dim=-1).exp()),
                )
            )
        return results

    def score_image(
        self, image: Image.Image, prompts: list[str], letters: list[list[str]]
    ) -> list[ScoreResult]:
        """Every question about one image: one image pass and one shared prefix prefill
        (`shared_prefix`), else the plain per-question forward passes."""
        from microqa.vlm import prefix

        image = to_rgb(image)
        if not self.shared_prefix:
            return self._score_plain([VLMRequest(image, p) for p in prompts], letters)
        return prefix.score_image(self, image, prompts, letters)

    def generate_image(
        self, image: Image.Image, prompts: list[str], *, max_new_tokens: int
    ) -> list[GenerateResult]:
        """Greedy answers to every question about one image (decoded and preprocessed once)."""
        from microqa.vlm import prefix

        image = to_rgb(image)
        if self.shared_prefix and prefix.plain_greedy(self):
            return prefix.generate_image(self, image, prompts, max_new_tokens)
        return self.generate([VLMRequest(image, p) for p in prompts], max_new_tokens=max_new_tokens)

    def visual_tokens(self, image: Image.Image) -> int:
        """Image placeholder tokens the processor emits for `image` at this backend's budget
        (Qwen: image_grid_thw / merge^2; LLaVA-NeXT: the anyres feature count)."""
        text = self._prompt_text(VLMRequest(image=image, prompt="?"))
        inputs = self.processor(
            text=[text], images=[[to_rgb(image)]], return_tensors="pt", **self._images_kwargs
        )
        return int((inputs["input_ids"] == self.image_token_id).sum())

    def letter_token_ids(self, letters: tuple[str, ...]) -> dict[str, list[int]]:
        """Single-token spellings of each letter ("A", " A" -> "ĠA" / "▁A")."""
        if letters not in self._letter_ids:
            self._letter_ids[letters] = self._find_letter_ids(letters)
        return self._letter_ids[letters]

    def _find_letter_ids(self, letters: tuple[str, ...]) -> dict[str, list[int]]:
        tokenizer = self.processor.tokenizer
        unk = tokenizer.unk_token_id
        table: dict[str, list[int]] = {}
        for letter in letters:
            ids = set()
            for spelling in (letter, " " + letter):
                encoded = tokenizer.encode(spelling, add_special_tokens=False)
                if len(encoded) == 1 and encoded[0] != unk:
                    ids.add(encoded[0])
            direct = tokenizer.convert_tokens_to_ids(letter)
            if isinstance(direct, int) and direct != unk:
                ids.add(direct)
            if not ids:
                raise ValueError(f"letter {letter!r} is not a single token for {self.model_id}")
            table[letter] = sorted(ids)
        owners = [i for ids in table.values() for i in ids]
        if len(owners) != len(set(owners)):
            raise ValueError(f"letters {letters} share tokens in {self.model_id}: {table}")
        return table


def check_model_class(model_id: str, config, class_name: str | None = None) -> None:
    """Refuse the earlier study's defect #1: a LLaVA-NeXT (v1.6) checkpoint must be a
    `llava_next` config loaded as LlavaNextForConditionalGeneration."""
    named = families.family_of(model_id)
    if named is not None and named.name == "llava_next" and config.model_type != "llava_next":
        raise WrongModelClassError(
            f"{model_id} looks like LLaVA-NeXT (v1.6) but its config says model_type "
            f"{config.model_type!r}; it needs a 'llava_next' config "
            "(LlavaNextForConditionalGeneration with anyres image_sizes)"
        )
    if config.model_type == "llava_next" and class_name not in (
        None,
        "LlavaNextForConditionalGeneration",
    ):
        raise WrongModelClassError(
            f"{model_id} is LLaVA-NeXT but resolved to {class_name}; it must be loaded as "
            "LlavaNextForConditionalGeneration (its anyres image_sizes are otherwise ignored)"
        )


def describe(backend: HFBackend) -> dict:
    """What a run used, for the provenance record."""
    return {
        "backend": backend.name,
        "model": backend.model_id,
        "model_type": backend.model_type,
        "model_class": type(backend.model).__name__,
        "revision": backend.revision,
        "weights": backend.weights,
        "device": backend.device,
        "dtype": str(backend.dtype).replace("torch.", ""),
        "image_budget": backend.image_budget,
        "batch_size": backend.batch_size,
        "shared_prefix": backend.shared_prefix,
    }
