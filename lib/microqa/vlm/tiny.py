"""Tiny same-family VLMs with random weights, for offline runs and tests.

Pretrained VLM weights cannot be downloaded here, so the offline path builds a miniature of
each model family from its real configuration classes: same architecture code, same processor
classes, same chat template, same special tokens, but a hidden size of 64, two layers and a
tokenizer trained locally on a few hundred sentences. The result is saved with
`save_pretrained` and loaded back through exactly the `from_pretrained` path a user takes with
the real hub id, so the backend code under test is the code that runs with real weights.

Every answer from these models is noise: the directory carries a marker file
(`microqa_tiny.json`) from which the backend reports `weights="random"`, and
`offline_vlm_dir` declares the substitution (an error under STRICT=1).

Families:
  qwen3_vl    Qwen3VLForConditionalGeneration + Qwen3VLProcessor (Qwen2VLImageProcessor with
              the real Qwen3-VL geometry: 16 px patches, 2x2 merge), so visual-token counts at
              a given pixel budget equal the real model's.
  llava_next  LlavaNextForConditionalGeneration (tiny CLIP vision tower + tiny Mistral) +
              LlavaNextProcessor; the llava-v1.6-mistral anyres grid scaled down 6x (336 -> 56),
              the Mistral [INST] chat template and a sentencepiece-style ("▁A") tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from microqa import config, provenance
from microqa.data import taxonomy
from microqa.vlm import families
from microqa.vlm.templates import LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE

FAMILIES = ("qwen3_vl", "llava_next")
MARKER = "microqa_tiny.json"

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<image>")

# The tiny LLaVA-NeXT uses the real anyres grid scaled down 6x: 56 px tiles of 14 px patches.
LLAVA_TINY_SCALE = 6
LLAVA_TINY_TILE = families.get("llava_next").processor["tile"] // LLAVA_TINY_SCALE
# The tiny Qwen3-VL keeps the real image processor (geometry and pixel limits).
_QWEN3 = families.get("qwen3_vl").processor


def _training_corpus() -> list[str]:
    """Sentences like the ones the study sends and the answers models give back."""
    letters = "ABCDEF"
    option_sets = [
        taxonomy.TECHNIQUE_FAMILIES,
        taxonomy.COARSE_CLASSES,
        taxonomy.PRIMARY_CATEGORIES,
        ("SEM", "TEM", "AFM", "Optical microscopy"),
    ]
    lines = []
    for options in option_sets:
        lettered = list(zip(letters[: len(options)], options, strict=True))
        lines.append(" ".join(f"{letter}) {option}" for letter, option in lettered))
        lines.append("\n".join(f"({letter}) {option}" for letter, option in lettered))
    lines += [
        "What imaging technique was used to capture this image?",
        "Which class of material is shown in this micrograph?",
        "Answer with the letter only.",
        "Describe the imaging technique, the kind of material and the visible microstructural "
        "features.",
        "Context: the nearest library images are labelled with these keywords.",
        "The answer is D. Answer: C. **B** (A) b) The image shows grains, phases, dendrites, "
        "twins, precipitates, pores, cracks, fibres, spherulites and lamellae.",
        "You are a helpful assistant. I cannot tell. It could be A or B.",
        "system user assistant",
        "0 1 2 3 4 5 6 7 8 9 10 25 50 100 0.5 0.25 um nm mm %",
        " ".join(taxonomy.TECHNIQUE_TABLE),
    ]
    lines += [f"{letter} {letter}) ({letter}) {letter}." for letter in letters]
    return lines * 4


def _alphabet() -> list[str]:
    """Printable ASCII, Latin-1 letters, Greek and a few symbols found in micrograph records;
    anything else becomes <unk> in the sentencepiece-style (LLaVA) tokenizer."""
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    chars += [chr(c) for c in range(0xC0, 0x100)]
    chars += [chr(c) for c in range(0x391, 0x3CA)]
    chars += list("μ°–—±×·²³½")
    return chars


def build_tokenizer(family: str):
    """A small BPE tokenizer trained here, wrapped as a transformers fast tokenizer.

    qwen3_vl: byte-level BPE (like Qwen's), the Qwen special tokens, no BOS, EOS <|im_end|>,
    pad <|endoftext|>. llava_next: sentencepiece-style Metaspace BPE (like Mistral's, so "A"
    after a space is the token "▁A"), BOS <s> added to every sequence, EOS </s>.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = _training_corpus()
    if family == "qwen3_vl":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1024,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer)
        tok.add_special_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            padding_side="left",
        )
    if family == "llava_next":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=1024,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=["▁"] + _alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer)
        tok.add_special_tokens([AddedToken(t, special=True) for t in LLAVA_SPECIAL_TOKENS[3:]])
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<unk>",  # as llava-hf's checkpoint does
            padding_side="left",
        )
    raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {FAMILIES}")


def _qwen3_vl(tokenizer, seed: int, hidden: int, layers: int):
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    ids = tokenizer.convert_tokens_to_ids
    cfg = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 16,  # head_dim 16
            "num_key_value_heads": hidden // 32,
            "head_dim": 16,
            "max_position_embeddings": 8192,
            # real: mrope_section [24, 20, 20] over head_dim 128; here the same split over 16
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": _QWEN3["patch_size"],
            "spatial_merge_size": _QWEN3["merge_size"],
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [0, 1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": _QWEN3["min_pixels"], "longest_edge": _QWEN3["max_pixels"]},
        patch_size=_QWEN3["patch_size"],
        merge_size=_QWEN3["merge_size"],
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=_QWEN3["patch_size"], merge_size=_QWEN3["merge_size"], temporal_patch_size=2
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    model = _seeded(Qwen3VLForConditionalGeneration, cfg, seed)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model, processor


def _llava_next(tokenizer, seed: int, hidden: int, layers: int):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    ids = tokenizer.convert_tokens_to_ids
    grid = [[h // LLAVA_TINY_SCALE, w // LLAVA_TINY_SCALE] for h, w in families.LLAVA_V16_GRID]
    cfg = LlavaNextConfig(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 16,  # head_dim 16
            "num_key_value_heads": hidden // 32,
            "max_position_embeddings": 8192,
            "bos_token_id": ids("<s>"),
            "eos_token_id": ids("</s>"),
            "pad_token_id": ids("<unk>"),
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,  # vision_feature_layer -2 (as llava-1.6) needs >= 2
            "num_attention_heads": 2,
            "image_size": LLAVA_TINY_TILE,
            "patch_size": 14,
            "projection_dim": 32,
        },
        image_token_index=ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(LLAVA_TINY_TILE // 14) ** 2,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": LLAVA_TINY_TILE},
        crop_size={"height": LLAVA_TINY_TILE, "width": LLAVA_TINY_TILE},
        image_grid_pinpoints=grid,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP CLS token, as in llava-hf's processor config
        chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE,
    )
    model = _seeded(LlavaNextForConditionalGeneration, cfg, seed)
    model.generation_config.eos_token_id = ids("</s>")
    model.generation_config.pad_token_id = ids("<unk>")
    return model, processor


def _seeded(model_class, cfg, seed: int):
    import torch

    torch.manual_seed(seed)
    return model_class(cfg).eval()


def build_tiny_vlm(
    family: str, out_dir: str | Path, seed: int = 0, *, hidden: int = 64, layers: int = 2
) -> Path:
    """Build the tiny random `family` model and save model + processor to `out_dir`.

    `hidden` / `layers` size its language model (e.g. 512 / 8 for a benchmark whose language
    model is not negligible); the vision tower and processor stay the same.

    Written to a temporary sibling first and renamed, so a killed build never leaves a
    directory that looks complete. Replaces an earlier tiny build in `out_dir`; refuses to
    overwrite any other non-empty directory. Returns `out_dir`.
    """
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {FAMILIES}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not is_tiny(out_dir) and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} exists and is not a tiny model directory; not overwriting"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    builder = _qwen3_vl if family == "qwen3_vl" else _llava_next
    model, processor = builder(tokenizer, seed, hidden, layers)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        marker = {
            "built_by": "microqa.vlm.tiny.build_tiny_vlm",
            "family": family,
            "seed": seed,
            "language_model": {"hidden_size": hidden, "layers": layers},
            "weights": "random",
            "transformers": transformers.__version__,
            "note": "tiny same-family model with RANDOM weights; its answers are noise",
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an earlier tiny build (or an empty directory)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not is_tiny(out_dir):  # a concurrent build that finished first is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_tiny(model_dir: str | Path) -> bool:
    return (Path(model_dir) / MARKER).is_file()


def family_for_model(model_id: str) -> str:
    """The tiny family that stands in for `model_id` (its family's `stand_in`)."""
    family = families.family_of(model_id)
    if family is None:
        known = ", ".join(f"{f.name} (-> {f.stand_in})" for f in families.FAMILIES.values())
        raise ValueError(f"no offline stand-in for VLM {model_id!r}: known families are {known}")
    return family.stand_in


def offline_vlm_dir(
    model_id: str, stage: str = "vlm", record: provenance.Record | None = None
) -> Path:
    """The local tiny stand-in for `model_id`, built on first use under models_dir()/tiny/.

    Declares the substitution for `stage` in `record`, the run's provenance (raises
    StrictModeError under STRICT=1), so a run can never use it quietly.
    """
    family = family_for_model(model_id)
    provenance.substitute(
        stage,
        f"VLM {model_id} -> tiny {family} model with RANDOM weights",
        "pretrained VLM weights are not available offline",
        record,
    )
    out_dir = config.models_dir() / "tiny" / family
    if not is_tiny(out_dir):
        build_tiny_vlm(family, out_dir)
    return out_dir
