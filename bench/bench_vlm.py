"""VLM answering cost: one image pass per image versus a forward pass (or five) per question.

For the study's real question set per image (every task and prompt set, the three CLIP context
variants, every cyclic rotation of the options: 36 questions) over N real micrographs, three
ways to answer, all through the same HFBackend:

- earlier loop: the earlier study's way, processor + `generate(max_new_tokens=5)` for one
  question at a time (batch 1);
- plain batched scoring: one forward pass per question, batched (the image is preprocessed,
  encoded and prefilled again for every question);
- shared prefix: the runner's path, one image pass and one prefill of the image prefix per
  image, each text segment the questions share (a CLIP context, a question stem) prefilled
  once on top of it, and only the questions' distinct tails scored, in batches.

Generate mode (free-text answers, 16 new tokens, batched), on the first images, three ways:
`model.generate` with every question's image preprocessed again (the processor given one copy
of the image per question); `model.generate` with the image preprocessed once for all the
questions about it; and the runner's path, `generate_image` on the shared prefix (the image
prefix prefilled once, the questions decoded greedily on top of it).

Offline it runs the tiny random-weight model of a family (language model hidden 64, 2 layers)
and a larger random-weight model of the same family (hidden 512, 8 layers), so the ratio is not
measured only on a model whose language model costs nothing; `--model` takes a hub id or a
local directory (real weights on a GPU: bench/gpu_check.sh). Also reported: prefill tokens
per question (prompt tokens the language model runs before the answer). Target: shared prefix
>= 5x the questions/s of the earlier loop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from microqa import config
from microqa.data import images
from microqa.vlm import prefix, questions, runner, tiny
from microqa.vlm.base import VLMRequest
from microqa.vlm.hf import HFBackend

TARGET = 5.0
GENERATE_TOKENS = runner.RunSettings.max_new_tokens  # the study's generate mode
# Representative CLIP context texts (their length is what matters to the cost).
TOPK = (
    "Hint from a CLIP image classifier (zero-shot; it can be wrong): its top 3 labels for this "
    "image are SEM (0.61), TEM (0.22), Optical (reflected) (0.09)."
)
NEIGHBOURS = (
    TOPK
    + "\n\nExpert annotations of the most similar images of other specimens in "
    + (
        "the DoITPoMS micrograph library (by CLIP image similarity):\n"
        + "\n".join(
            f"{i}. (similarity 0.9{i}) Ferrite and pearlite in a hypoeutectoid steel, etched in "
            "nital. Keywords: pearlite, ferrite, steel, grain boundary."
            for i in (1, 2, 3)
        )
    )
)
SIZES = {"tiny": (64, 2), "larger": (512, 8)}
# Qwen3-VL-8B-Instruct's published dimensions (config.json on the hub): an 8.7B-parameter model
# with random weights costs what the real one costs per token (only the vocabulary is the
# stand-in tokenizer's); built on a GPU by --sizes 8b.
QWEN3_VL_8B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}
QWEN3_VL_8B_VISION = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "out_hidden_size": 4096,
    "deepstack_visual_indexes": [8, 16, 24],
}


def study_questions() -> list[questions.Question]:
    """Every multiple-choice question a default full run asks about one image."""
    out = []
    for task, prompt_set in questions.DEFAULT_JOBS:
        for context in (None, TOPK, NEIGHBOURS) if prompt_set == "study" else (None,):
            for rotation in questions.rotations(task, prompt_set):
                out.append(
                    questions.build_question(
                        task, prompt_set, context_text=context, rotation=rotation
                    )
                )
    return out


def find_images(n: int, images_dir: Path | None) -> list[Path]:
    candidates = [images_dir] if images_dir else []
    candidates += [config.shared_dir() / "doitpoms" / "images", config.sample_dir() / "images"]
    for folder in candidates:
        if folder and folder.is_dir():
            paths = sorted(p for p in folder.iterdir() if p.is_file())
            if len(paths) >= n:
                return paths[:n]
    raise SystemExit(f"fewer than {n} micrographs in {', '.join(map(str, candidates))}")


def prefill_tokens(backend: HFBackend, image, prompts: list[str]) -> tuple[float, float]:
    """Prompt tokens per question: plain (image prefix + question each time) and shared."""
    splits = [
        prefix.split_prompt(backend, backend._prompt_text(VLMRequest(image, p))) for p in prompts
    ]
    visual = backend.visual_tokens(image)
    tokenizer = backend.processor.tokenizer
    prefix_length = len(tokenizer(splits[0][0])["input_ids"]) - 1 + visual
    suffixes = [suffix for _, suffix in splits]
    plain = sum(prefix_length + len(s) for s in suffixes) / len(prompts)
    shared = (prefix_length + prefix.planned_tokens(prefix.plan(suffixes))) / len(prompts)
    return plain, shared


def build_8b_dims(directory: Path, device: str) -> Path:
    """A random-weight Qwen3-VL with the 8B model's dimensions, saved as a model directory.

    The tiny build gives the real processor (patch 16, merge 2, the family's image budget), the
    chat template and the stand-in tokenizer; its config is widened to the published
    dimensions, initialised in bf16 straight on `device`, and saved next to that processor,
    so the benchmark loads it through HFBackend as a user's model directory is loaded.
    """
    import json
    import shutil

    import torch
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    if tiny.is_tiny(directory):
        return directory
    base = tiny.build_tiny_vlm("qwen3_vl", directory.with_name(directory.name + "-base"))
    cfg = AutoConfig.from_pretrained(base)
    for key, value in QWEN3_VL_8B_TEXT.items():
        setattr(cfg.text_config, key, value)
    for key, value in QWEN3_VL_8B_VISION.items():
        setattr(cfg.vision_config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16).eval()
    staging = directory.with_name(directory.name + "-staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base, staging)
    model.save_pretrained(staging)
    marker = json.loads((staging / tiny.MARKER).read_text(encoding="utf-8"))
    marker["language_model"] = QWEN3_VL_8B_TEXT
    marker["vision"] = QWEN3_VL_8B_VISION
    marker["parameters"] = sum(p.numel() for p in model.parameters())
    marker["note"] = "Qwen3-VL-8B dimensions, RANDOM weights, stand-in tokenizer (benchmark only)"
    (staging / tiny.MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    del model
    staging.rename(directory)
    return directory


def bench_model(model: str, paths: list[Path], args) -> dict:
    backend = HFBackend(model, batch_size=args.batch_size, device=args.device)
    qs = study_questions()
    prompts, letters = [q.prompt for q in qs], [list(q.letters) for q in qs]
    decoded = [images.open_rgb(p) for p in paths]
    earlier_images = decoded[: args.earlier_images or len(decoded)]

    def timed(fn, subset) -> float:
        fn(subset[0])  # warm-up: first-call allocations
        start = time.perf_counter()
        for image in subset:
            fn(image)
        return len(subset) * len(prompts) / (time.perf_counter() - start)

    def earlier(image):
        for prompt in prompts:
            backend.generate([VLMRequest(image, prompt)], max_new_tokens=5)

    def plain(image):
        backend.shared_prefix = False
        backend.score_image(image, prompts, letters)

    def shared(image):
        backend.shared_prefix = True
        backend.score_image(image, prompts, letters)

    generate_images = decoded[: args.generate_images]
    # copies made outside the timed calls: distinct image objects take the processor's path
    copies = {id(image): [image.copy() for _ in prompts] for image in generate_images}

    def generate_per_question(image):
        requests = [VLMRequest(c, p) for c, p in zip(copies[id(image)], prompts, strict=True)]
        backend.generate(requests, max_new_tokens=GENERATE_TOKENS)

    def generate_once(image):
        backend.shared_prefix = False
        backend.generate_image(image, prompts, max_new_tokens=GENERATE_TOKENS)

    def generate_shared(image):
        backend.shared_prefix = True
        backend.generate_image(image, prompts, max_new_tokens=GENERATE_TOKENS)

    saved_batch, backend.batch_size = backend.batch_size, 1
    earlier_qps = timed(earlier, earlier_images)
    backend.batch_size = saved_batch
    plain_qps, shared_qps = timed(plain, decoded), timed(shared, decoded)
    per_question_qps = timed(generate_per_question, generate_images)
    once_qps = timed(generate_once, generate_images)
    generate_shared_qps = timed(generate_shared, generate_images)
    tokens = [prefill_tokens(backend, image, prompts) for image in decoded]
    return {
        "model": model,
        "weights": backend.weights,
        "device": backend.device,
        "dtype": str(backend.dtype).replace("torch.", ""),
        "image_budget": backend.image_budget,
        "n_images": len(decoded),
        "n_images_earlier_loop": len(earlier_images),
        "questions_per_image": len(prompts),
        "earlier_loop_qps": earlier_qps,
        "plain_batched_qps": plain_qps,
        "shared_prefix_qps": shared_qps,
        "prefill_tokens_per_question_plain": sum(t[0] for t in tokens) / len(tokens),
        "prefill_tokens_per_question_shared": sum(t[1] for t in tokens) / len(tokens),
        "ratio_shared_vs_earlier": shared_qps / earlier_qps,
        "ratio_shared_vs_plain": shared_qps / plain_qps,
        "n_images_generate": len(generate_images),
        "generate_image_per_question_qps": per_question_qps,
        "generate_image_once_qps": once_qps,
        "generate_shared_prefix_qps": generate_shared_qps,
        "ratio_generate_once_vs_per_question": once_qps / per_question_qps,
        "ratio_generate_shared_vs_per_question": generate_shared_qps / per_question_qps,
        "target": TARGET,
    }


def report(label: str, r: dict) -> None:
    print(
        f"\n{label}: {r['model']} ({r['weights']} weights, {r['device']}, {r['dtype']}, "
        f"budget {r['image_budget']} px), {r['questions_per_image']} questions x "
        f"{r['n_images']} micrographs (earlier loop: {r['n_images_earlier_loop']})"
    )
    plain_tokens = r["prefill_tokens_per_question_plain"]
    lines = [
        ("earlier loop (generate 5 tokens, batch 1)", r["earlier_loop_qps"], plain_tokens),
        ("plain batched scoring", r["plain_batched_qps"], plain_tokens),
        ("shared image prefix", r["shared_prefix_qps"], r["prefill_tokens_per_question_shared"]),
    ]
    for name, qps, tokens in lines:
        print(f"  {name:<44}{qps:9.2f} questions/s {tokens:9.1f} prefill tokens/question")
    ratio = r["ratio_shared_vs_earlier"]
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(
        f"  shared prefix / earlier loop: {ratio:.1f}x ({verdict} the {TARGET:.0f}x target); "
        f"shared / plain batched: {r['ratio_shared_vs_plain']:.1f}x"
    )
    print(
        f"  generate mode ({GENERATE_TOKENS} tokens, batched, {r['n_images_generate']} "
        f"micrographs), questions/s: model.generate, image preprocessed per question "
        f"{r['generate_image_per_question_qps']:.2f}, once per image "
        f"{r['generate_image_once_qps']:.2f} ({r['ratio_generate_once_vs_per_question']:.2f}x); "
        f"shared prefix {r['generate_shared_prefix_qps']:.2f} "
        f"({r['ratio_generate_shared_vs_per_question']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen3_vl", choices=tiny.FAMILIES)
    parser.add_argument("--model", help="hub id or local dir (default: the random --family models)")
    parser.add_argument(
        "--sizes", default="tiny,larger", help="random models: tiny,larger (GPU: 8b, qwen3_vl)"
    )
    parser.add_argument("--images", type=Path, help="folder of micrographs (default: mirror)")
    parser.add_argument("-n", "--n-images", type=int, default=32)
    parser.add_argument(
        "--earlier-images",
        type=int,
        default=None,
        help="time the earlier loop on the first N images only (default: all)",
    )
    parser.add_argument(
        "--generate-images", type=int, default=4, help="micrographs timed in generate mode"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    args, _ignored = parser.parse_known_args(argv)

    paths = find_images(args.n_images, args.images)
    models = {}
    if args.model:
        models["model"] = args.model
    else:
        for size in args.sizes.split(","):
            if size == "8b":
                directory = config.models_dir() / "bench" / "qwen3_vl-8b-dims"
                models["random Qwen3-VL with the 8B dimensions"] = str(
                    build_8b_dims(directory, args.device or "cuda")
                )
                continue
            hidden, layers = SIZES[size]
            directory = config.models_dir() / "bench" / f"{args.family}-{size}"
            if not tiny.is_tiny(directory):
                tiny.build_tiny_vlm(args.family, directory, hidden=hidden, layers=layers)
            models[f"{size} random {args.family} (LM hidden {hidden}, {layers} layers)"] = str(
                directory
            )
    results = {}
    for label, model in models.items():
        results[label] = bench_model(model, paths, args)
        report(label, results[label])
    which = "model" if args.model else f"{args.family}_{args.sizes.replace(',', '_')}"
    out = config.build_dir() / "bench" / f"vlm_{which}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
