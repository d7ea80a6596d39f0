"""The VLM families the study knows: one entry per family, one place per fact.

For each family: how to recognise its model ids and configs (`family_of`, the ONE matcher the
backend, the runner, the stand-in builder and the cost tables use), the image-processor facts
of its real checkpoint (from its preprocessor_config.json, so visual-token costs can be
computed without downloading it), its default image budget, and which offline stand-in
(`microqa.vlm.tiny`) replaces it when its weights cannot be loaded here.

The image budget (max pixels per image) is resolved once, by `resolve_budget`, and the
resolved number is what the backend applies and what the answer cache, provenance and the
visual-token table record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The real llava-v1.6-mistral anyres grid, (height, width) resolutions of 336 px tiles.
LLAVA_V16_GRID = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# Qwen-VL: 448*448 = 200,704 px, at most 196 visual tokens for Qwen3-VL's 32 px merged
# patches (256 for Qwen2.5-VL's 28 px). The processors' own defaults (16.8 MP, 12.8 MP) would
# spend thousands of tokens on a 1024 px micrograph.
QWEN_DEFAULT_BUDGET = 448 * 448


@dataclass(frozen=True)
class Family:
    name: str
    model_types: frozenset[str]  # config.model_type values of this family
    id_markers: tuple[str, ...]  # substrings of a normalised hub id
    processor: dict = field(default_factory=dict)  # the real checkpoint's image processor
    default_budget: int | None = None  # None: the checkpoint's own native resolution
    stand_in: str = ""  # the tiny family (microqa.vlm.tiny) that replaces it offline

    @property
    def is_qwen(self) -> bool:
        return self.name.startswith("qwen")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen3_vl",
            frozenset({"qwen3_vl", "qwen3_vl_moe"}),
            ("qwen3-vl",),
            # Qwen/Qwen3-VL-*-Instruct
            {"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 16777216},
            QWEN_DEFAULT_BUDGET,
            "qwen3_vl",
        ),
        Family(
            "qwen2_5_vl",
            frozenset({"qwen2_5_vl", "qwen2_vl"}),
            ("qwen2.5-vl", "qwen2-vl"),
            # Qwen/Qwen2.5-VL-*-Instruct (the earlier study's processor defaults)
            {"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056},
            QWEN_DEFAULT_BUDGET,
            "qwen3_vl",
        ),
        Family(
            "llava_next",
            frozenset({"llava_next"}),
            ("llava-v1.6", "llava-next"),
            # llava-hf/llava-v1.6-mistral-7b-hf
            {
                "tile": 336,
                "patch_size": 14,
                "image_grid_pinpoints": [list(pair) for pair in LLAVA_V16_GRID],
                "num_additional_image_tokens": 1,
                "vision_feature_select_strategy": "default",
            },
            None,
            "llava_next",
        ),
    )
}


def family_of(model: str | None = None, *, model_type: str | None = None) -> Family | None:
    """The family of a hub id / directory name, or of a config's `model_type` (which wins
    when given); None for a model of no known family."""
    if model_type is not None:
        for family in FAMILIES.values():
            if model_type in family.model_types:
                return family
        return None
    name = (model or "").lower().replace("_", "-")
    for family in FAMILIES.values():
        if any(marker in name for marker in family.id_markers):
            return family
    return None


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown VLM family {name!r}; choose one of {sorted(FAMILIES)}") from None


def grid_area(grid) -> int:
    """The largest resolution (pixels) of a LLaVA-NeXT anyres grid."""
    return max(int(h) * int(w) for h, w in grid)


def resolve_budget(family: Family | None, requested: int | None, native_grid=None) -> int | None:
    """The pixel budget a run applies: the request, else the family's default; for LLaVA-NeXT
    the default is the checkpoint's own grid, i.e. its largest resolution (`native_grid`).
    None only for models of no known family (which take no budget)."""
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"image_budget must be a positive number of pixels, got {requested}")
        return int(requested)
    if family is None:
        return None
    if family.default_budget is not None:
        return family.default_budget
    grid = native_grid if native_grid is not None else family.processor["image_grid_pinpoints"]
    return grid_area(grid)


def restrict_grid(grid, budget: int) -> list[list[int]]:
    """The anyres grid resolutions (height, width) whose area fits the pixel budget."""
    kept = [list(pair) for pair in grid if pair[0] * pair[1] <= budget]
    if not kept:
        smallest = min(h * w for h, w in grid)
        raise ValueError(
            f"image_budget {budget} px is below the smallest LLaVA-NeXT grid resolution "
            f"({smallest} px); choose at least {smallest}"
        )
    return kept
