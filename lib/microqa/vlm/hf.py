"""The transformers backend: AutoProcessor + AutoModelForImageTextToText, batched.

One code path for a hub id and a local directory (the offline tiny models are loaded exactly
like real checkpoints). Model-family specifics:

- Qwen-VL (Qwen3-VL, Qwen2.5-VL, Qwen2-VL): an explicit image-resolution budget in pixels
  (`image_budget`, default `DEFAULT_QWEN_BUDGET` = 448*448 = 200,704 px: at most 196 visual
  tokens for Qwen3-VL's 32 px merged patches, 256 for Qwen2.5-VL's 28 px). The processor's own
  default (16.8 MP for Qwen3-VL, 12.8 MP for Qwen2.5-VL) would spend thousands of tokens on a
  1024 px micrograph; `visual_token_table` shows the difference.
- LLaVA-NeXT (llava-v1.6-*): must load as LlavaNextForConditionalGeneration (loading it with
  the LLaVA-1.5 class was the earlier study's defect #1; we check and raise). Its processor
  returns `image_sizes` and expands `<image>` to the anyres feature count. Budget: by default
  the checkpoint's own anyres grid; an explicit `image_budget` keeps only the grid resolutions
  with height*width <= budget (in both the processor and the model config, which must agree).

Running with real weights (GPU): `HFBackend("Qwen/Qwen3-VL-8B-Instruct")` or
`HFBackend("llava-hf/llava-v1.6-mistral-7b-hf")` (or `load_backend("hf", ...)`, or a local
snapshot directory) picks CUDA and bf16 by itself; about 18 GB of GPU memory for the 8B model.
Pass `revision=` to pin a hub commit; the answer cache keys on the resolved commit hash.

`score` reads the next-token logits after the chat-templated prompt (one forward pass, as the
prefill of a 1-token greedy `generate`, so each architecture computes its own position ids
under left padding). A letter can be a token in several spellings ("A" and "▁A" / "ĠA"); its
log-probability is the logsumexp over its single-token spellings (the probability that the
model commits to that letter in any spelling), then the letters are renormalised with a
softmax.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from microqa import tiny
from microqa.vlm.base import GenerateResult, ScoreResult, VLMRequest

DEFAULT_QWEN_BUDGET = 448 * 448
DEFAULT_BATCH_SIZE = 8
QWEN_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"}

# Image-processor settings of the real checkpoints (their preprocessor_config.json), so the real
# models' visual-token counts can be computed exactly without downloading them.
REAL_PROCESSORS = {
    # Qwen/Qwen3-VL-*-Instruct
    "qwen3_vl": {"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 16777216},
    # Qwen/Qwen2.5-VL-*-Instruct (the earlier study's processor defaults)
    "qwen2_5_vl": {"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056},
    # llava-hf/llava-v1.6-mistral-7b-hf
    "llava_next": {
        "tile": 336,
        "patch_size": 14,
        "image_grid_pinpoints": tiny.LLAVA_V16_GRID,
        "num_additional_image_tokens": 1,
        "vision_feature_select_strategy": "default",
    },
}


class WrongModelClassError(TypeError):
    """A checkpoint would be loaded with a class that does not match its architecture."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (1, L, LA, P, PA, RGBA, CMYK, I;16, I, F ...) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        # 16-bit / float images: stretch to 8 bit instead of clipping at 255
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    elif image.mode in {"P", "PA"} and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


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

    # ---- family specifics -------------------------------------------------------------
    def _apply_budget(self, image_budget: int | None) -> int | None:
        if self.model_type in QWEN_MODEL_TYPES:
            budget = image_budget or DEFAULT_QWEN_BUDGET
            size = self.processor.image_processor.size
            min_pixels = size["shortest_edge"] if "shortest_edge" in size else 3136
            self._images_kwargs = {
                "size": {"shortest_edge": min(min_pixels, budget), "longest_edge": budget}
            }
            return budget
        self._images_kwargs = {}
        if self.model_type == "llava_next":
            if image_budget is not None:
                grid = restrict_grid(self.model.config.image_grid_pinpoints, image_budget)
                self.model.config.image_grid_pinpoints = grid
                self.processor.image_processor.image_grid_pinpoints = grid
            return image_budget
        if image_budget is not None:
            raise ValueError(
                f"image_budget is implemented for Qwen-VL and LLaVA-NeXT models, not for "
                f"{self.model_id} (model_type {self.model_type!r})"
            )
        return None

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
        images = [[to_rgb(request.image)] for request in batch]
        inputs = self.processor(
            text=texts, images=images, padding=True, return_tensors="pt", **self._images_kwargs
        )
        return inputs.to(self.device)

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
        if self.model_type not in QWEN_MODEL_TYPES:
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
        import torch

        variants = self.letter_token_ids(tuple(letters))
        results: list[ScoreResult] = []
        start = time.perf_counter()
        for batch, inputs in self._prefetched(requests):
            logprobs = torch.log_softmax(self._next_token_logits(inputs).float(), dim=-1)
            per_letter = torch.stack(
                [torch.logsumexp(logprobs[:, variants[letter]], dim=-1) for letter in letters],
                dim=-1,
            )
            probabilities = torch.softmax(per_letter, dim=-1).cpu()
            letter_mass = torch.logsumexp(per_letter, dim=-1).exp().cpu()
            per_letter = per_letter.cpu()
            latency, start = (time.perf_counter() - start) / len(batch), time.perf_counter()
            counts = self._visual_counts(inputs)
            for row, count in enumerate(counts):
                results.append(
                    ScoreResult(
                        probabilities={
                            letter: float(probabilities[row, i]) for i, letter in enumerate(letters)
                        },
                        logprobs={
                            letter: float(per_letter[row, i]) for i, letter in enumerate(letters)
                        },
                        latency_s=latency,
                        visual_tokens=count,
                        letter_mass=float(letter_mass[row]),
                    )
                )
        return results

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
    name = model_id.lower()
    if ("llava-v1.6" in name or "llava-next" in name) and config.model_type != "llava_next":
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


def restrict_grid(grid: list[list[int]], budget: int) -> list[list[int]]:
    """The anyres grid resolutions (height, width) whose area fits the pixel budget."""
    kept = [list(pair) for pair in grid if pair[0] * pair[1] <= budget]
    if not kept:
        smallest = min(h * w for h, w in grid)
        raise ValueError(
            f"image_budget {budget} px is below the smallest LLaVA-NeXT grid resolution "
            f"({smallest} px); choose at least {smallest}"
        )
    return kept


# ---- hardware-free cost: visual tokens of the real checkpoints -------------------------


@functools.lru_cache(maxsize=4)
def _real_llava_processor(grid: tuple[tuple[int, int], ...]):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    spec = REAL_PROCESSORS["llava_next"]
    tile = spec["tile"]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=[list(pair) for pair in grid],
    )
    # the token count depends on the image processor only; any tokenizer with <image> will do
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=_llava_tokenizer(),
        patch_size=spec["patch_size"],
        vision_feature_select_strategy=spec["vision_feature_select_strategy"],
        num_additional_image_tokens=spec["num_additional_image_tokens"],
    )


@functools.lru_cache(maxsize=1)
def _llava_tokenizer():
    return tiny.build_tokenizer("llava_next")


def _size_of(image: Image.Image | str | Path | tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a PIL image, an image file (header only) or a (width, height) pair."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (str, Path)):
        with Image.open(image) as handle:
            return handle.size
    width, height = image
    return int(width), int(height)


def real_processor_visual_tokens(
    family: str, image: Image.Image | str | Path | tuple[int, int], budget: int | None = None
) -> int:
    """Visual tokens the REAL checkpoint of `family` spends on `image` at a pixel `budget`
    (None: the processor's default), from the same transformers image-processor code.

    family: "qwen3_vl", "qwen2_5_vl" or "llava_next" (llava-v1.6-mistral).
    """
    width, height = _size_of(image)
    if family in ("qwen3_vl", "qwen2_5_vl"):
        from transformers import Qwen2VLImageProcessor

        spec = REAL_PROCESSORS[family]
        max_pixels = budget or spec["max_pixels"]
        processor = Qwen2VLImageProcessor(
            patch_size=spec["patch_size"], merge_size=spec["merge_size"]
        )
        patches = processor.get_number_of_image_patches(
            height,
            width,
            {"min_pixels": min(spec["min_pixels"], max_pixels), "max_pixels": max_pixels},
        )
        return patches // spec["merge_size"] ** 2
    if family == "llava_next":
        grid = REAL_PROCESSORS["llava_next"]["image_grid_pinpoints"]
        if budget is not None:
            grid = restrict_grid(grid, budget)
        processor = _real_llava_processor(tuple(tuple(pair) for pair in grid))
        counted = processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
        return counted.num_image_tokens[0]
    raise ValueError(f"unknown family {family!r}; choose one of {sorted(REAL_PROCESSORS)}")


def visual_token_table(
    images: Iterable[Image.Image | str | Path | tuple[int, int]],
    budgets: dict[str, Sequence[int | None]] | None = None,
) -> pd.DataFrame:
    """Visual tokens per image of the real checkpoints, per family and pixel budget.

    `budgets` maps a family to the budgets to compare; None stands for the processor default
    (what the earlier study used). Default: each family's default versus this study's choice
    (448*448 px for Qwen; LLaVA-NeXT's native grid versus its smallest 2-tile resolutions).
    Rows: family, budget, n_images, mean / median / p95 / max tokens, total tokens and the
    mean relative to the family's default.
    """
    sizes = [_size_of(image) for image in images]
    if not sizes:
        raise ValueError("visual_token_table needs at least one image")
    budgets = budgets or {
        "qwen3_vl": [None, DEFAULT_QWEN_BUDGET],
        "qwen2_5_vl": [None, DEFAULT_QWEN_BUDGET],
        "llava_next": [None, 336 * 672],
    }
    rows = []
    for family, family_budgets in budgets.items():
        default_mean = None
        for budget in family_budgets:
            counts = pd.Series([real_processor_visual_tokens(family, s, budget) for s in sizes])
            mean = float(counts.mean())
            if budget is None:
                default_mean = mean
            rows.append(
                {
                    "family": family,
                    "budget": "processor default" if budget is None else f"{budget} px",
                    "budget_px": budget,
                    "n_images": len(counts),
                    "mean_tokens": mean,
                    "median_tokens": float(counts.median()),
                    "p95_tokens": float(counts.quantile(0.95)),
                    "max_tokens": int(counts.max()),
                    "total_tokens": int(counts.sum()),
                    "relative_to_default": mean / default_mean if default_mean else math.nan,
                }
            )
    return pd.DataFrame(rows)


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
    }
