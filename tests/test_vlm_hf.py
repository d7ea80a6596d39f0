"""The transformers backend on the tiny same-family models, and the visual-token cost maths.

The tiny models are built once per session into a temporary directory and loaded through the
same AutoProcessor / AutoModelForImageTextToText.from_pretrained path as a hub checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from microqa import provenance
from microqa.data import images
from microqa.vlm import families, hf, tiny, visual_tokens
from microqa.vlm.base import VLMRequest
from tests.conftest import MIRROR, needs_mirror

LETTERS = ["A", "B", "C", "D"]
PROMPT = (
    "What imaging technique was used to capture this image?\n"
    "A) SEM\nB) TEM\nC) AFM\nD) Optical microscopy\nAnswer with the letter only."
)


def micrograph(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A grainy synthetic micrograph: smooth blobs plus noise, in the requested PIL mode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    field = np.sin(x / (7 + seed)) * np.cos(y / (5 + seed)) + rng.normal(0, 0.3, (height, width))
    grey = ((field - field.min()) / (np.ptp(field) + 1e-9) * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([grey, np.roll(grey, 3, 1), grey[::-1]], -1), "RGB")
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 200)  # 16-bit greyscale
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture(scope="session")
def backends(tiny_dirs):
    torch.set_num_threads(1)
    return {family: hf.HFBackend(path, batch_size=3) for family, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def mixed_requests():
    sizes = [(520, 390), (300, 700), (640, 640), (350, 249), (800, 600)]
    return [VLMRequest(micrograph(w, h, i), PROMPT) for i, (w, h) in enumerate(sizes)]


def test_tiny_models_load_through_the_auto_classes(tiny_dirs, backends):
    expected = {
        "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
        "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    }
    for family, backend in backends.items():
        model_class, processor_class = expected[family]
        assert type(backend.model).__name__ == model_class
        assert type(backend.processor).__name__ == processor_class
        assert backend.weights == "random"
        assert backend.revision.startswith("random:")
        assert backend.device == "cpu" and backend.model.dtype == torch.float32
        marker = json.loads((tiny_dirs[family] / tiny.MARKER).read_text())
        assert marker["family"] == family and marker["weights"] == "random"
    # same seed, same weights: the revision (cache identity) is reproducible
    assert hf.resolve_revision(str(tiny_dirs["qwen3_vl"]), None) == backends["qwen3_vl"].revision


def test_chat_templates_are_the_families_own(backends):
    request = VLMRequest(micrograph(64, 64, 0), "Q?", system="Be brief.")
    qwen = backends["qwen3_vl"]._prompt_text(request)
    assert qwen == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )
    llava = backends["llava_next"]._prompt_text(VLMRequest(micrograph(64, 64, 0), "Q?"))
    assert llava == "[INST] <image>\nQ? [/INST]"
    ids = backends["llava_next"].processor(text=[llava], images=[[micrograph(64, 64, 0)]])
    assert ids["input_ids"][0][0] == backends["llava_next"].processor.tokenizer.bos_token_id


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_score_is_a_distribution_independent_of_batching(family, backends, mixed_requests):
    backend = backends[family]
    batched = backend.score(mixed_requests, LETTERS)
    backend.batch_size = 1
    try:
        single = backend.score(mixed_requests, LETTERS)
    finally:
        backend.batch_size = 3
    again = backend.score(mixed_requests, LETTERS)
    assert len(batched) == len(mixed_requests)
    for b, s, a in zip(batched, single, again, strict=True):
        assert list(b.probabilities) == LETTERS
        assert math.isclose(sum(b.probabilities.values()), 1.0, abs_tol=1e-6)
        assert all(0.0 < p < 1.0 for p in b.probabilities.values())
        for letter in LETTERS:
            assert b.probabilities[letter] == pytest.approx(s.probabilities[letter], abs=1e-5)
            assert b.probabilities[letter] == a.probabilities[letter]  # deterministic
        assert b.latency_s > 0 and b.visual_tokens == s.visual_tokens > 0
    # different images really give different answers (the image reaches the model)
    first = [r.probabilities["A"] for r in batched]
    assert len({round(p, 6) for p in first}) > 1


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_score_equals_the_next_token_softmax_of_a_plain_forward(family, backends):
    backend = backends[family]
    request = VLMRequest(micrograph(333, 222, 7), PROMPT)
    inputs = backend._inputs([request])
    with torch.inference_mode():
        logits = backend.model(**inputs).logits[0, -1].float()
    logprobs = torch.log_softmax(logits, -1)
    variants = backend.letter_token_ids(tuple(LETTERS))
    per_letter = torch.stack([torch.logsumexp(logprobs[variants[x]], 0) for x in LETTERS])
    expected = torch.softmax(per_letter, 0)
    result = backend.score([request], LETTERS)[0]
    for i, letter in enumerate(LETTERS):
        assert result.probabilities[letter] == pytest.approx(float(expected[i]), abs=1e-5)
        assert result.logprobs[letter] == pytest.approx(float(per_letter[i]), abs=1e-4)


def test_letters_take_every_single_token_spelling(backends):
    qwen = backends["qwen3_vl"].letter_token_ids(tuple(LETTERS))
    llava = backends["llava_next"].letter_token_ids(tuple(LETTERS))
    qwen_tokens = backends["qwen3_vl"].processor.tokenizer.convert_ids_to_tokens(qwen["A"])
    llava_tokens = backends["llava_next"].processor.tokenizer.convert_ids_to_tokens(llava["A"])
    assert set(qwen_tokens) == {"A", "ĠA"}  # byte-level BPE: bare and space-prefixed
    assert set(llava_tokens) == {"A", "▁A"}  # sentencepiece style
    with pytest.raises(ValueError, match="not a single token"):
        backends["qwen3_vl"].letter_token_ids(("A", "Zebra-crossing"))


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_generate_batched_equals_unbatched(family, backends, mixed_requests):
    backend = backends[family]
    batched = backend.generate(mixed_requests, max_new_tokens=6)
    backend.batch_size = 1
    try:
        single = backend.generate(mixed_requests, max_new_tokens=6)
    finally:
        backend.batch_size = 3
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.text and r.latency_s > 0 and r.visual_tokens > 0 for r in batched)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_questions_about_one_image_preprocess_it_once_into_the_processors_own_tensors(
    family, backends, monkeypatch
):
    backend = backends[family]
    image = micrograph(520, 390, 1)
    prompts = [PROMPT, "Short?", PROMPT + " Think of the scale bar."]
    requests = [VLMRequest(image, p) for p in prompts]
    expected = backend.processor(
        text=[backend._prompt_text(r) for r in requests],
        images=[[image]] * len(requests),
        padding=True,
        return_tensors="pt",
        **backend._images_kwargs,
    )
    calls = []
    preprocess = backend.processor.image_processor.__call__
    monkeypatch.setattr(
        type(backend.processor.image_processor),
        "__call__",
        lambda self, images, **kw: calls.append(images) or preprocess(images, **kw),
    )
    inputs = backend._inputs(requests)
    assert len(calls) == 1 and len(calls[0]) == 1  # one image processed, once
    assert sorted(inputs) == sorted(expected)
    for key in expected:
        assert inputs[key].dtype == expected[key].dtype, key
        assert torch.equal(inputs[key], expected[key]), key
    # copies of an image (different objects) take the processor's own path
    calls.clear()
    backend._inputs([VLMRequest(image.copy(), p) for p in prompts])
    assert sum(len(c) for c in calls) == len(prompts)
    # and the answers are the same whichever path built the inputs
    one_image = backend.generate_image(image, prompts, max_new_tokens=6)
    copies = backend.generate([VLMRequest(image.copy(), p) for p in prompts], max_new_tokens=6)
    assert [r.text for r in one_image] == [r.text for r in copies]


def test_image_modes_give_the_same_answer_as_their_rgb_version(backends):
    backend = backends["qwen3_vl"]
    base = micrograph(300, 200, 3)
    for mode in ("L", "P", "RGBA", "1"):
        converted = base.convert(mode)
        as_rgb = converted.convert("RGB")
        mode_result, rgb_result = backend.score(
            [VLMRequest(converted, PROMPT), VLMRequest(as_rgb, PROMPT)], LETTERS
        )
        for letter in LETTERS:
            assert mode_result.probabilities[letter] == pytest.approx(
                rgb_result.probabilities[letter], abs=1e-5
            ), mode
    sixteen_bit = micrograph(300, 200, 3, mode="I;16")
    rgb = images.to_rgb(sixteen_bit)
    assert rgb.mode == "RGB" and rgb.getextrema()[0] == (0, 255)  # stretched, not clipped
    assert backend.score([VLMRequest(sixteen_bit, PROMPT)], LETTERS)[0].visual_tokens > 0


@needs_mirror()
def test_real_gif_and_bmp_micrographs(backends):
    """The mirror's .jpg names hide GIF (greyscale and palette) and BMP files."""
    import csv

    wanted = {("GIF", "L"), ("GIF", "P"), ("BMP", "RGB"), ("JPEG", "L")}
    found = {}
    with (MIRROR / "records.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = MIRROR / "images" / f"{int(row['micrograph_no']):06d}.jpg"
            if not path.exists():
                continue
            with Image.open(path) as probe:
                key = (probe.format, probe.mode)
            if key in wanted and key not in found:
                found[key] = path
            if len(found) == len(wanted):
                break
    assert set(found) == wanted
    requests = [VLMRequest(Image.open(path), PROMPT) for path in found.values()]
    for backend in backends.values():
        results = backend.score(requests, LETTERS)
        for path, result in zip(found.values(), results, strict=True):
            assert math.isclose(sum(result.probabilities.values()), 1.0, abs_tol=1e-6)
            assert result.visual_tokens == backend.visual_tokens(Image.open(path))


def test_qwen_visual_tokens_grow_with_the_budget_and_match_the_real_model(tiny_dirs):
    image = micrograph(1024, 768, 1)
    counts = []
    for budget in (128 * 128, 256 * 256, 448 * 448, 768 * 768):
        backend = hf.HFBackend(tiny_dirs["qwen3_vl"], image_budget=budget)
        count = backend.visual_tokens(image)
        # the tiny model keeps Qwen3-VL's 16 px patches and 2x2 merge, so it costs the same
        assert count == visual_tokens.real_processor_visual_tokens("qwen3_vl", image, budget)
        assert count * (16 * 2) ** 2 <= budget
        counts.append(count)
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_llava_budget_restricts_the_anyres_grid(tiny_dirs, backends):
    image = micrograph(800, 600, 2)
    native = backends["llava_next"].visual_tokens(image)
    small = hf.HFBackend(tiny_dirs["llava_next"], image_budget=56 * 112)
    assert small.model.config.image_grid_pinpoints == [[56, 112], [112, 56]]
    assert small.processor.image_processor.image_grid_pinpoints == [[56, 112], [112, 56]]
    assert small.visual_tokens(image) < native
    result = small.score([VLMRequest(image, PROMPT)], LETTERS)[0]  # model and processor agree
    assert result.visual_tokens == small.visual_tokens(image)
    with pytest.raises(ValueError, match="smallest LLaVA-NeXT grid"):
        hf.HFBackend(tiny_dirs["llava_next"], image_budget=56 * 56)
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        hf.HFBackend(tiny_dirs["llava_next"], dtype="float33")


def test_real_visual_token_counts_match_hand_computation():
    # An 800 x 600 (width x height) micrograph.
    # Qwen3-VL, budget 448*448 = 200704 px, merged patch 32 px: rounded 608 x 800 = 486400 px
    # exceeds the budget, so scale by sqrt(480000 / 200704) = 1.5465 and floor to 32:
    # height floor(600 / 1.5465 / 32) * 32 = 384, width floor(800 / 1.5465 / 32) * 32 = 512
    # -> (384 / 16) * (512 / 16) patches / 4 merged = 24 * 32 / 4 = 192 tokens.
    assert visual_tokens.real_processor_visual_tokens("qwen3_vl", (800, 600), 448 * 448) == 192
    # Qwen3-VL default (65536..16777216 px): 608 x 800 fits -> 38 * 50 / 4 = 475.
    assert visual_tokens.real_processor_visual_tokens("qwen3_vl", (800, 600)) == 475
    # Qwen2.5-VL default (14 px patches, factor 28): 588 x 812 -> 42 * 58 / 4 = 609.
    assert visual_tokens.real_processor_visual_tokens("qwen2_5_vl", (800, 600)) == 609
    # LLaVA-1.6-Mistral: best grid resolution for 800 x 600 is 672 x 672 (2 x 2 tiles of 336),
    # i.e. 48 x 48 patches of 14 px; unpadding to the 4:3 aspect keeps int(600 * 48 / 800) = 36
    # rows: 36 * 48 = 1728 features + 36 newline tokens + the 24 * 24 = 576 base tile
    # (+1 CLS, then -1 for the "default" feature strategy) = 2340.
    assert visual_tokens.real_processor_visual_tokens("llava_next", (800, 600)) == 2340
    # Restricted to the 336 x 672 and 672 x 336 (h x w) resolutions: 336 x 672 keeps more of the
    # image (scale 0.56 vs 0.42), i.e. 24 x 48 patches; the image (4:3) is narrower than that
    # grid (2:1), so unpadding cuts columns: int(800 * 24 / 600) = 32 -> 24 * 32 = 768 features
    # + 24 newline tokens + 576 base = 1368.
    assert visual_tokens.real_processor_visual_tokens("llava_next", (800, 600), 336 * 672) == 1368
    with pytest.raises(ValueError, match="unknown VLM family"):
        visual_tokens.real_processor_visual_tokens("gpt4v", (800, 600))


def test_visual_token_table_compares_budgets_with_the_defaults(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(1024, 768), (500, 500), (2048, 1536)]):
        path = tmp_path / f"{i}.png"
        micrograph(w, h, i).save(path)
        paths.append(path)
    table = visual_tokens.visual_token_table(paths)
    assert set(table["family"]) == {"qwen3_vl", "qwen2_5_vl", "llava_next"}
    assert (table["n_images"] == 3).all()
    defaults = table[table["budget_px"].isna()]
    assert (defaults["relative_to_default"] == 1.0).all()
    chosen = table[table["budget_px"].notna()]
    assert (chosen["relative_to_default"] < 1.0).all()
    # a default run gives LLaVA-NeXT its native grid: no smaller budget is reported for it
    assert set(chosen["family"]) == {"qwen3_vl", "qwen2_5_vl"}
    qwen = table[(table["family"] == "qwen3_vl") & table["budget_px"].notna()].iloc[0]
    assert qwen["max_tokens"] <= 448 * 448 // 32**2
    expected_total = sum(
        visual_tokens.real_processor_visual_tokens("qwen3_vl", p, 448 * 448) for p in paths
    )
    assert qwen["total_tokens"] == expected_total
    with pytest.raises(ValueError, match="at least one image"):
        visual_tokens.visual_token_table([])


def test_llava_next_must_load_with_its_own_class(tmp_path):
    """The earlier study's defect #1: a LLaVA-1.6 checkpoint read as plain LLaVA."""
    from transformers import LlavaConfig

    wrong = tmp_path / "llava-v1.6-mistral-7b-hf"
    LlavaConfig(
        text_config={"model_type": "mistral", "hidden_size": 16, "num_attention_heads": 2},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 16,
            "num_attention_heads": 2,
        },
    ).save_pretrained(wrong)
    with pytest.raises(hf.WrongModelClassError, match="llava_next"):
        hf.HFBackend(wrong)
    llava_next = SimpleNamespace(model_type="llava_next")
    with pytest.raises(hf.WrongModelClassError, match="LlavaNextForConditionalGeneration"):
        hf.check_model_class("some/checkpoint", llava_next, "LlavaForConditionalGeneration")
    hf.check_model_class("some/checkpoint", llava_next, "LlavaNextForConditionalGeneration")


def test_revision_identifies_the_weights(tmp_path, tiny_dirs):
    copy = tmp_path / "my-finetune"
    shutil.copytree(tiny_dirs["llava_next"], copy)
    (copy / tiny.MARKER).unlink()  # now it is "someone's own weights"
    revision = hf.resolve_revision(str(copy), None)
    assert revision.startswith("sha256:")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert hf.resolve_revision(str(copy), None) != revision
    snapshot = tmp_path / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    assert hf.resolve_revision(str(snapshot), None) == "ab" * 20
    with pytest.raises(FileNotFoundError, match="no weight files"):
        hf.resolve_revision(str(tmp_path / "snapshots"), None)


def test_offline_dir_maps_hub_ids_and_declares_the_substitute(tmp_path, monkeypatch, tiny_dirs):
    assert tiny.family_for_model("Qwen/Qwen3-VL-8B-Instruct") == "qwen3_vl"
    assert tiny.family_for_model("Qwen/Qwen2.5-VL-7B-Instruct") == "qwen3_vl"
    assert tiny.family_for_model("llava-hf/llava-v1.6-mistral-7b-hf") == "llava_next"
    with pytest.raises(ValueError, match="no offline stand-in"):
        tiny.family_for_model("openai/gpt-4o")
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MICROQA_MODELS", str(tmp_path / "data" / "models"))
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError):
        tiny.offline_vlm_dir("Qwen/Qwen3-VL-8B-Instruct")
    assert not (tmp_path / "data" / "models").exists()
    monkeypatch.setenv("STRICT", "0")
    target = tmp_path / "data" / "models" / "tiny" / "llava_next"
    shutil.copytree(tiny_dirs["llava_next"], target)  # as if built by an earlier run
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    record = provenance.Record.load()
    assert tiny.offline_vlm_dir("llava-hf/llava-v1.6-mistral-7b-hf", record=record) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    [entry] = record.fallbacks("vlm")
    assert "RANDOM weights" in entry["what"] and "llava-v1.6" in entry["what"]


def test_build_refuses_to_overwrite_other_directories(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tiny model directory"):
        tiny.build_tiny_vlm("llava_next", precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]  # no temporary left behind
    with pytest.raises(ValueError, match="unknown tiny VLM family"):
        tiny.build_tiny_vlm("gpt4v", tmp_path / "x")


def test_budget_is_resolved_once_and_keys_the_answer_cache(tiny_dirs, backends, monkeypatch):
    from dataclasses import replace

    from microqa.vlm import runner

    qwen, llava = backends["qwen3_vl"], backends["llava_next"]
    assert qwen.image_budget == families.QWEN_DEFAULT_BUDGET  # resolved, never None
    assert hf.describe(qwen)["image_budget"] == families.QWEN_DEFAULT_BUDGET
    # LLaVA-NeXT by default: its own grid, recorded as that grid's largest resolution
    assert llava.image_budget == 112 * 112
    assert llava.processor.image_processor.image_grid_pinpoints == [
        [56, 112],
        [112, 56],
        [112, 112],
        [168, 56],
        [56, 168],
    ]

    def key(backend):
        return runner._key(backend, "Q?", ("A", "B"), "0" * 64, "score", {}, "original").key

    before = key(qwen)
    changed = replace(families.FAMILIES["qwen3_vl"], default_budget=256 * 256)
    monkeypatch.setitem(families.FAMILIES, "qwen3_vl", changed)
    moved = hf.HFBackend(tiny_dirs["qwen3_vl"])
    assert moved.image_budget == 256 * 256
    assert key(moved) != before  # a changed default never reuses answers made at another one
    assert key(hf.HFBackend(tiny_dirs["qwen3_vl"], image_budget=448 * 448)) == before


def test_family_is_recognised_in_one_place():
    assert families.family_of("Qwen/Qwen3-VL-8B-Instruct").name == "qwen3_vl"
    assert families.family_of("Qwen/Qwen2.5-VL-7B-Instruct").name == "qwen2_5_vl"
    assert families.family_of("llava-hf/llava-v1.6-mistral-7b-hf").name == "llava_next"
    assert families.family_of("openai/gpt-4o") is None
    assert families.family_of(model_type="qwen3_vl_moe").name == "qwen3_vl"
    assert families.family_of(model_type="llava") is None  # LLaVA-1.5: not LLaVA-NeXT
