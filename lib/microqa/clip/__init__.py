"""CLIP stage: models, embedding, zero-shot scores, tables and figures, and its outputs.

    models     names, loading, random same-architecture stand-ins (`ModelIdentity`)
    embed      decoding (images.open_rgb), batching, the SQLite embedding cache
    pixels     what the model's preprocessing gets: reduced-size decode, variant, decoded cache
    shards     which part of an image set one process embeds (--shard, torchrun, Slurm)
    prompts    every text the stage shows the text encoder
    zero_shot  class embeddings, probabilities, the run, text search
    prompt_choice  the prompt-set choice, cross-fitted over the folds of specimens (no torch)
    report     tables and figures
    outputs    build/clip/: file names, columns, reading and writing
    cli        `python -m microqa embed`

The names a notebook uses are re-exported here (`from microqa import clip`), loaded on first
use: importing `microqa.clip.outputs` (as the VLM context and the comparison do) must not
load torch, so the OpenAI-compatible path stays free of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names come from (also read by tools/notebook_deps.py)
    from microqa.clip import (  # noqa: F401
        cli,
        embed,
        models,
        outputs,
        pixels,
        prompt_choice,
        prompts,
        report,
        shards,
        zero_shot,
    )

SUBMODULES = (
    "cli",
    "embed",
    "models",
    "outputs",
    "pixels",
    "prompt_choice",
    "prompts",
    "report",
    "shards",
    "zero_shot",
)
# name -> the submodule that defines it
_EXPORTS = {
    "EmbeddingResult": "embed",
    "default_workers": "embed",
    "embed_images": "embed",
    "encode_texts": "embed",
    "HF_CLIP_B32_PREPROCESSING": "models",
    "ArchitectureUnavailable": "models",
    "ClipModel": "models",
    "ModelIdentity": "models",
    "WeightsUnavailable": "models",
    "default_device": "models",
    "load_identity": "models",
    "load_model": "models",
    "load_or_substitute": "models",
    "parse_model_name": "models",
    "random_weights_file": "models",
    "slug": "models",
    "SCORE_COLUMNS": "outputs",
    "CROSS_FITTED": "prompt_choice",
    "apply_choices": "prompt_choice",
    "choose_prompt_sets": "prompt_choice",
    "cross_fitted_predictions": "prompt_choice",
    "pick_prompt_set": "prompt_choice",
    "predictions": "prompt_choice",
    "category_multi_table": "report",
    "confusion_figure": "report",
    "material_set": "report",
    "per_class_tables": "report",
    "search_figure": "report",
    "status_table": "report",
    "zero_shot_table": "report",
    "zero_shot_view": "report",
    "ZeroShotRun": "zero_shot",
    "class_embeddings": "zero_shot",
    "record_provenance": "zero_shot",
    "run_robustness": "zero_shot",
    "run_zero_shot": "zero_shot",
    "stage_labels": "zero_shot",
    "search_example": "zero_shot",
    "text_to_image_search": "zero_shot",
    "write_outputs": "zero_shot",
    "zero_shot_probabilities": "zero_shot",
}
__all__ = sorted([*_EXPORTS, *SUBMODULES])


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
