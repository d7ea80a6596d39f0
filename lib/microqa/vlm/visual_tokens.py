"""Hardware-free cost: visual tokens the REAL checkpoints spend per image at a pixel budget.

Computed with the same transformers image-processor code the checkpoints use, configured from
their processor facts in `microqa.vlm.families`, so it needs no weights and no GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from microqa.vlm import families


@functools.lru_cache(maxsize=4)
def _real_llava_processor(grid: tuple[tuple[int, int], ...]):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    from microqa.vlm import tiny

    spec = families.get("llava_next").processor
    tile = spec["tile"]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=[list(pair) for pair in grid],
    )
    # the token count depends on the image processor only; any tokenizer with <image> will do
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tiny.build_tokenizer("llava_next"),
        patch_size=spec["patch_size"],
        vision_feature_select_strategy=spec["vision_feature_select_strategy"],
        num_additional_image_tokens=spec["num_additional_image_tokens"],
    )


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
    spec = families.get(family).processor
    width, height = _size_of(image)
    if families.get(family).is_qwen:
        from transformers import Qwen2VLImageProcessor

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
    grid = spec["image_grid_pinpoints"]
    if budget is not None:
        grid = families.restrict_grid(grid, budget)
    processor = _real_llava_processor(tuple(tuple(pair) for pair in grid))
    counted = processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
    return counted.num_image_tokens[0]


def default_budgets(names: Iterable[str]) -> dict[str, list[int | None]]:
    """Per family: the processor's default (None, what the earlier study used) and the budget
    this study resolves by default, when that differs from the processor's own."""
    out = {}
    for name in names:
        resolved = families.resolve_budget(families.get(name), None)
        native = families.get(name).processor.get("image_grid_pinpoints")
        same = native is not None and resolved == families.grid_area(native)
        out[name] = [None] if same else [None, resolved]
    return out


def visual_token_table(
    images: Iterable[Image.Image | str | Path | tuple[int, int]],
    budgets: dict[str, Sequence[int | None]] | None = None,
) -> pd.DataFrame:
    """Visual tokens per image of the real checkpoints, per family and pixel budget.

    `budgets` maps a family to the budgets to compare; None stands for the processor default.
    Default: every family's processor default versus the budget this study resolves for it.
    Rows: family, budget, n_images, mean / median / p95 / max tokens, total tokens and the
    mean relative to the family's default.
    """
    sizes = [_size_of(image) for image in images]
    if not sizes:
        raise ValueError("visual_token_table needs at least one image")
    budgets = budgets or default_budgets(families.FAMILIES)
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
