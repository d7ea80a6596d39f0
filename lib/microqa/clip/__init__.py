"""CLIP stage: models, embedding, zero-shot scores, tables and figures, and its outputs.

    models     names, loading, random same-architecture stand-ins (`ModelIdentity`)
    embed      decoding (images.open_rgb), batching, the SQLite embedding cache
    prompts    every text the stage shows the text encoder
    zero_shot  class embeddings, probabilities, the run, the prompt-set choice, text search
    report     tables and figures
    outputs    build/clip/: file names, columns, reading and writing
    cli        `python -m microqa embed`

The names a notebook uses are re-exported here (`from microqa import clip`).
"""

from microqa.clip import embed, models, outputs, prompts, report, zero_shot
from microqa.clip.embed import EmbeddingResult, default_workers, embed_images, encode_texts
from microqa.clip.models import (
    HF_CLIP_B32_PREPROCESSING,
    ArchitectureUnavailable,
    ClipModel,
    ModelIdentity,
    WeightsUnavailable,
    default_device,
    load_identity,
    load_model,
    load_or_substitute,
    parse_model_name,
    random_weights_file,
    slug,
)
from microqa.clip.outputs import SCORE_COLUMNS
from microqa.clip.report import (
    category_multi_table,
    confusion_figure,
    material_set,
    per_class_tables,
    search_figure,
    status_table,
    zero_shot_table,
)
from microqa.clip.zero_shot import (
    ZeroShotRun,
    choose_prompt_sets,
    class_embeddings,
    predictions,
    run_zero_shot,
    stage_labels,
    text_to_image_search,
    write_outputs,
    zero_shot_probabilities,
)

__all__ = [
    "HF_CLIP_B32_PREPROCESSING",
    "SCORE_COLUMNS",
    "ArchitectureUnavailable",
    "ClipModel",
    "EmbeddingResult",
    "ModelIdentity",
    "WeightsUnavailable",
    "ZeroShotRun",
    "category_multi_table",
    "choose_prompt_sets",
    "class_embeddings",
    "confusion_figure",
    "default_device",
    "default_workers",
    "embed",
    "embed_images",
    "encode_texts",
    "load_identity",
    "load_model",
    "load_or_substitute",
    "material_set",
    "models",
    "outputs",
    "parse_model_name",
    "per_class_tables",
    "predictions",
    "prompts",
    "random_weights_file",
    "report",
    "run_zero_shot",
    "search_figure",
    "slug",
    "stage_labels",
    "status_table",
    "text_to_image_search",
    "write_outputs",
    "zero_shot",
    "zero_shot_probabilities",
    "zero_shot_table",
]
