"""CLIP stage: model names and loading, random-weight stand-in, image decoding, embedding cache,
preprocessing fidelity against Hugging Face, zero-shot scoring on planted embeddings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from microqa import clip, metrics, prompts, provenance, taxonomy
from tests.clip_fixtures import ARCH, place_random_b32, random_b32_file  # noqa: F401
from tests.conftest import MIRROR, REFERENCE, needs_mirror, needs_reference

# One real micrograph per (format, mode) found in the mirror: the decoding quirks to cover.
MIRROR_KINDS = {
    ("JPEG", "L"): "000001.jpg",
    ("JPEG", "RGB"): "000002.jpg",
    ("GIF", "L"): "000148.jpg",
    ("GIF", "P"): "000680.jpg",
    ("BMP", "RGB"): "000850.jpg",
}


@pytest.fixture
def stage_dirs(tmp_path, monkeypatch):
    """Fresh data/build dirs (cache, models, provenance) and a hub that cannot be reached."""
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.delenv("STRICT", raising=False)
    monkeypatch.setattr(clip, "hub_reachable", lambda *a, **k: False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    return tmp_path


@pytest.fixture(scope="module")
def random_b32(random_b32_file):  # noqa: F811 (pytest fixture)
    """ViT-B-32 (QuickGELU, as OpenAI's) with seeded random weights, loaded through the
    `ARCH:/path/to/file` route a user's local weights take."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return random_b32_file, clip.load_model(f"{ARCH}:{random_b32_file}", device="cpu")


def _micrographs(tmp_path: Path) -> list[Path]:
    """Real micrographs in every format and mode, saved under their true extensions."""
    out = []
    for (fmt, mode), name in MIRROR_KINDS.items():
        target = tmp_path / f"{Path(name).stem}.{fmt.lower().replace('jpeg', 'jpg')}"
        shutil.copy(MIRROR / "images" / name, target)
        with Image.open(target) as img:
            assert (img.format, img.mode) == (fmt, mode)
        out.append(target)
    return out


# --------------------------------------------------------------------------- names and loading


@pytest.mark.parametrize(
    "name,arch,pretrained",
    [
        ("ViT-B-32:openai", "ViT-B-32", "openai"),
        ("ViT-B-32-quickgelu:/models/w.safetensors", "ViT-B-32-quickgelu", "/models/w.safetensors"),
        ("hf-hub:org/model", "hf-hub:org/model", None),
    ],
)
def test_model_names_follow_open_clip(name, arch, pretrained):
    spec = clip.parse_model_name(name)
    assert (spec.arch, spec.pretrained) == (arch, pretrained)


@pytest.mark.parametrize("bad", ["", "ViT-B-32", "ViT-B-32:", "hf-hub:"])
def test_bad_model_names_are_refused_naming_them(bad):
    with pytest.raises(ValueError, match="CLIP model name|empty"):
        clip.parse_model_name(bad)


def test_unknown_architecture_or_tag_is_a_clear_error(stage_dirs):
    with pytest.raises(ValueError, match="ViT-Nonsense"):
        clip.load_model("ViT-Nonsense:openai")
    with pytest.raises(ValueError, match="not-a-tag"):
        clip.load_model("ViT-B-32:not-a-tag")


def test_local_file_route_loads_the_random_weights_marked_random(random_b32):
    path, loaded = random_b32
    assert loaded.weights == "random"  # read from the file's metadata, not from the caller
    assert loaded.arch == "ViT-B-32-quickgelu"
    assert loaded.weights_id.startswith("sha256:")
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = loaded.model.state_dict()
    assert set(saved) == set(state)
    for key in ("visual.conv1.weight", "text_projection", "logit_scale"):
        assert torch.equal(saved[key], state[key])


def test_missing_weights_file_names_the_file_and_how_to_supply_one(stage_dirs):
    with pytest.raises(clip.WeightsUnavailable, match=r"nothere\.bin.*local file"):
        clip.load_model(f"ViT-B-32:{stage_dirs / 'nothere.bin'}")


def test_hub_architecture_offline_is_skipped_with_a_reason(stage_dirs):
    with pytest.raises(clip.ArchitectureUnavailable, match="hub"):
        clip.load_or_substitute("hf-hub:microqa-test/no-such-model", device="cpu")


def test_missing_pretrained_weights_fall_back_loudly(stage_dirs, capsys, random_b32_file):  # noqa: F811
    placed = place_random_b32(random_b32_file, stage_dirs / "data")  # as built by a first run
    loaded = clip.load_or_substitute("ViT-B-32:openai", device="cpu", random_archs=("ViT-B-32",))
    assert loaded.weights == "random" and loaded.name == "ViT-B-32:openai"
    assert Path(loaded.weights_source) == placed
    assert "OFFLINE SUBSTITUTE" in capsys.readouterr().err
    (entry,) = provenance.fallbacks("clip")
    assert "random weights" in entry["what"] and "local file" in entry["reason"]


def test_strict_mode_refuses_the_random_stand_in(stage_dirs, monkeypatch):
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="ViT-B-32:openai"):
        clip.load_or_substitute("ViT-B-32:openai", device="cpu")


def test_profile_without_stand_in_skips_with_the_supply_hint(stage_dirs):
    with pytest.raises(clip.ArchitectureUnavailable, match="ViT-L-14-quickgelu:/path/to"):
        clip.load_or_substitute("ViT-L-14:openai", device="cpu", random_archs=("ViT-B-32",))


# --------------------------------------------------------------------------- images and cache


@needs_mirror()
def test_every_image_kind_decodes_to_rgb(tmp_path):
    for path in _micrographs(tmp_path):
        img = clip.load_image(path)
        assert img.mode == "RGB" and min(img.size) > 0


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "000123.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(clip.ImageDecodeError, match="000123.jpg"):
        clip.load_image(bad)


@needs_mirror()
def test_cache_second_run_embeds_nothing_and_new_images_alone(random_b32, stage_dirs):
    _, loaded = random_b32
    paths = _micrographs(stage_dirs)
    first = clip.embed_images(loaded, paths[:3], batch_size=2, num_workers=1, progress=False)
    assert (first.n_computed, first.n_cached) == (3, 0)
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1, atol=1e-5)

    again = clip.embed_images(loaded, paths[:3], batch_size=2, num_workers=1, progress=False)
    assert (again.n_computed, again.n_cached) == (0, 3)
    assert np.array_equal(again.embeddings, first.embeddings)

    more = clip.embed_images(loaded, paths, batch_size=2, num_workers=1, progress=False)
    assert (more.n_computed, more.n_cached) == (len(paths) - 3, 3)
    assert np.array_equal(more.embeddings[:3], first.embeddings)
    # The batched, cached result equals a plain one-image forward pass (no mix-ups in batches).
    with torch.inference_mode():
        pixels = loaded.preprocess(clip.load_image(paths[4]))[None]
        direct = torch.nn.functional.normalize(loaded.model.encode_image(pixels), dim=-1)[0]
    assert np.allclose(more.embeddings[4], direct.numpy(), atol=1e-4)

    # The key is the image content: a renamed copy is a cache hit; the same bytes under
    # another model identity are not.
    renamed = stage_dirs / "copy.png"
    shutil.copy(paths[0], renamed)
    assert clip.embed_images(loaded, [renamed], num_workers=0, progress=False).n_cached == 1
    other = clip.ClipModel(**{**loaded.__dict__, "weights_id": "sha256:other"})
    assert clip.embed_images(other, [renamed], num_workers=0, progress=False).n_computed == 1


# --------------------------------------------------------------------------- fidelity


@needs_mirror()
@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_preprocessing_matches_hugging_face_clip_processor(random_b32, backend):
    """Our ViT-B/32 pixels vs CLIPProcessor's (openai/clip-vit-base-patch32 settings)."""
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _, loaded = random_b32
    processor_class = CLIPImageProcessor if backend == "torchvision" else CLIPImageProcessorPil
    hf = processor_class(**clip.HF_CLIP_B32_PREPROCESSING)
    names = (
        list(MIRROR_KINDS.values()) + sorted(p.name for p in (MIRROR / "images").iterdir())[::97]
    )
    for name in names:
        path = MIRROR / "images" / name
        ours = loaded.preprocess(clip.load_image(path)).numpy()
        with Image.open(path) as raw:
            theirs = hf(images=raw, return_tensors="pt")["pixel_values"][0].numpy()
        assert ours.shape == theirs.shape == (3, 224, 224)
        diff = np.abs(ours - theirs)
        assert diff.mean() < 1e-3 and diff.max() < 0.05, (name, diff.mean(), diff.max())


def _real_weights_name() -> str | None:
    path = os.environ.get("MICROQA_CLIP_WEIGHTS")
    if path and Path(path).is_file():
        return f"ViT-B-32-quickgelu:{path}"
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache("timm/vit_base_patch32_clip_224.openai", filename)
        if isinstance(found, str):
            return f"ViT-B-32-quickgelu:{found}"
    return None


@needs_mirror()
@needs_reference()
@pytest.mark.skipif(
    _real_weights_name() is None,
    reason="real ViT-B-32 OpenAI weights unavailable (set MICROQA_CLIP_WEIGHTS to a local "
    "open_clip file, or cache timm/vit_base_patch32_clip_224.openai)",
)
def test_real_weights_reproduce_the_reference_features(stage_dirs):
    loaded = clip.load_model(_real_weights_name(), device=clip.default_device())
    assert loaded.weights == "pretrained"
    with np.load(REFERENCE / "clip_vit_b32_openai_image_embeddings.npz") as data:
        reference = dict(zip(data["micrograph_no"].tolist(), data["embeddings"], strict=True))
    # The mirror downscaled images over 1024 px; compare only the byte-identical ones.
    chosen = []
    for number in sorted(reference)[::20]:
        path = MIRROR / "images" / f"{number:06d}.jpg"
        with Image.open(path) as img:
            if max(img.size) < 1024:
                chosen.append((number, path))
    result = clip.embed_images(loaded, [p for _, p in chosen], progress=False)
    cosines = [float(result.embeddings[i] @ reference[n]) for i, (n, _) in enumerate(chosen)]
    assert min(cosines) > 0.99, cosines


# --------------------------------------------------------------------------- zero-shot


def _planted(n_per_class: int, classes, dim: int = 64, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    images = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return centres, images, labels


def test_zero_shot_on_planted_embeddings_is_perfect_and_permuted_labels_are_chance():
    classes = taxonomy.TECHNIQUE_FAMILIES
    centres, images, labels = _planted(200, classes)
    probs = clip.zero_shot_probabilities(images, centres, logit_scale=100.0)
    assert np.allclose(probs.sum(axis=1), 1)
    predicted = np.array(classes)[probs.argmax(axis=1)]
    truth = np.array(classes)[labels]
    assert metrics.accuracy(truth, predicted) == 1.0
    shuffled = np.random.default_rng(1).permutation(truth)
    assert abs(metrics.accuracy(shuffled, predicted) - 1 / len(classes)) < 0.06


def test_ensemble_is_the_renormalised_mean_of_normalised_prompt_embeddings():
    vectors = {"a": np.array([3.0, 0, 0]), "b": np.array([0, 0.5, 0]), "c": np.array([0, 0, 2.0])}

    def encode(texts):
        return np.stack([vectors[t] for t in texts])

    got = clip.class_embeddings(encode, {"x": ["a", "b"], "y": ["c"]})
    assert np.allclose(got[0], np.array([1, 1, 0]) / np.sqrt(2))
    assert np.allclose(got[1], [0, 0, 1])


def test_prompt_sets_cover_every_class_of_every_task():
    for task, (_, classes) in taxonomy.TASKS.items():
        sets = prompts.prompt_sets(task)
        assert set(sets) == set(prompts.PROMPT_SET_NAMES)
        for prompt_set in sets.values():
            assert list(prompt_set) == list(classes)
            assert all(prompt_set[c] for c in classes)
    assert prompts.prompt_sets("technique_coarse")["earlier-study"]["SEM"] == ["a SEM image"]


def _scores_frame(df, task, prompt_set, good_ids, seed):
    """Long-format scores: the true class wins on `good_ids`, a random class elsewhere."""
    rng = np.random.default_rng(seed)
    column, classes = taxonomy.TASKS[task]
    rows = []
    for m, truth in zip(df["micrograph_no"], df[column], strict=True):
        winner = truth if m in good_ids else classes[rng.integers(len(classes))]
        for c in classes:
            p = 0.9 if c == winner else 0.1 / (len(classes) - 1)
            rows.append((m, "planted", "random", task, prompt_set, c, p))
    return pd.DataFrame(rows, columns=clip.SCORE_COLUMNS)


def test_prompt_set_is_chosen_on_the_select_half_only():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "micrograph_no": np.arange(n),
            "technique_family": rng.choice(taxonomy.TECHNIQUE_FAMILIES, n),
            "specimen_group": [f"s{i // 2}" for i in range(n)],
            "category_set": [("Metal or alloy",)] * n,
        }
    )
    split = pd.Series(np.where(np.arange(n) % 4 < 2, "select", "evaluate"))
    select = set(df.loc[split == "select", "micrograph_no"])
    evaluate = set(df["micrograph_no"]) - select
    # "good-on-select" is perfect where choices are made and random where they are reported;
    # "good-on-evaluate" the reverse. A choice that peeked would take the second.
    scores = pd.concat(
        [
            _scores_frame(df, "technique", "good-on-select", select, 1),
            _scores_frame(df, "technique", "good-on-evaluate", evaluate, 2),
        ]
    )
    best = clip.choose_prompt_sets(scores, df, split)
    assert best.loc[0, "prompt_set"] == "good-on-select"
    table = clip.zero_shot_table(scores, df, split, best, n_boot=50)
    row = table[(table.prompt_set == "good-on-evaluate") & (table.subset == "evaluate")].iloc[0]
    assert row["accuracy"] == 1.0 and row["n"] == len(evaluate) and not row["selected"]
    chosen = table[(table.prompt_set == "good-on-select") & (table.subset == "evaluate")].iloc[0]
    assert chosen["selected"] and chosen["accuracy"] < 0.5


def test_category_hit_view_counts_any_material_of_the_record():
    assert clip.material_set(("Composite", "Polymer", "Polymer composite")) == {
        taxonomy.COMPOSITE,
        taxonomy.POLYMER,
    }
    assert clip.material_set(("Foam", "Metal or alloy", "Metal or alloy composite foam")) == {
        taxonomy.METAL,
        taxonomy.COMPOSITE,
    }
    assert clip.material_set(("Oxide",)) == {taxonomy.CERAMIC}
    assert clip.material_set(("Device",)) == set()


def test_fast_bootstrap_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k = int(rng.integers(5, 200)), int(rng.integers(2, 6))
        labels = list("abcdef"[:k])
        y = np.asarray(rng.choice(labels, n), dtype=object)
        p = metrics._clean(list(rng.choice(labels + [None], n)))
        codes = metrics._Codes(y, p)
        for _ in range(10):
            i = rng.integers(0, n, n)
            assert codes.accuracy(i) == pytest.approx(metrics.accuracy(y[i], p[i]))
            assert codes.balanced_accuracy(i) == pytest.approx(
                metrics.balanced_accuracy(y[i], p[i])
            )
            assert codes.macro_f1(i) == pytest.approx(metrics.macro_f1(y[i], p[i]))
