"""clip.models: model names, loading through the local-file route, the random same-architecture
stand-in (one pass, the user's name kept), identities and labels, preprocessing fidelity."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microqa import clip, provenance
from microqa.data import images
from tests.clip_fixtures import ARCH, place_random_b32, random_b32_file, stage_dirs  # noqa: F401
from tests.conftest import MIRROR, REFERENCE, needs_mirror, needs_reference

MIRROR_KINDS = ("000001.jpg", "000002.jpg", "000148.jpg", "000680.jpg", "000850.jpg")


@pytest.fixture(scope="module")
def random_b32(random_b32_file):  # noqa: F811 (pytest fixture)
    """ViT-B-32 (QuickGELU, as OpenAI's) with seeded random weights, loaded through the
    `ARCH:/path/to/file` route a user's local weights take."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return random_b32_file, clip.load_model(f"{ARCH}:{random_b32_file}", device="cpu")


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


def test_unknown_architecture_or_tag_is_a_clear_error(stage_dirs):  # noqa: F811
    with pytest.raises(ValueError, match="ViT-Nonsense"):
        clip.load_model("ViT-Nonsense:openai")
    with pytest.raises(ValueError, match="not-a-tag"):
        clip.load_model("ViT-B-32:not-a-tag")


def test_local_file_route_loads_the_random_weights_marked_random(random_b32):
    path, loaded = random_b32
    assert loaded.weights == "random"  # read from the file's metadata, not from the caller
    assert loaded.identity.seed == 0 and not loaded.identity.substitute
    assert loaded.arch == "ViT-B-32-quickgelu"
    assert loaded.weights_id.startswith("sha256:")
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = loaded.model.state_dict()
    assert set(saved) == set(state)
    for key in ("visual.conv1.weight", "text_projection", "logit_scale"):
        assert torch.equal(saved[key], state[key])
    # a user's file is named by its file name and weights, never by this machine's folders
    assert loaded.label == f"{ARCH}:{path.name} (random weights, seed 0)"
    assert str(path.parent) not in loaded.label


def test_missing_weights_file_names_the_file_and_how_to_supply_one(stage_dirs):  # noqa: F811
    with pytest.raises(clip.WeightsUnavailable, match=r"nothere\.bin.*local file"):
        clip.load_model(f"ViT-B-32:{stage_dirs / 'nothere.bin'}")


def test_hub_architecture_offline_is_skipped_with_a_reason(stage_dirs):  # noqa: F811
    with pytest.raises(clip.ArchitectureUnavailable, match="hub"):
        clip.load_or_substitute("hf-hub:microqa-test/no-such-model", device="cpu")


def test_missing_pretrained_weights_fall_back_loudly_in_one_pass(
    stage_dirs,  # noqa: F811
    caplog,
    random_b32_file,  # noqa: F811
    monkeypatch,
):
    placed = place_random_b32(random_b32_file, stage_dirs / "data")  # as built by a first run
    parsed = []
    real_parse = clip.models.parse_model_name
    monkeypatch.setattr(
        clip.models, "parse_model_name", lambda n: parsed.append(n) or real_parse(n)
    )
    record = provenance.Record.load()
    loaded = clip.load_or_substitute(
        "ViT-B-32:openai", device="cpu", random_archs=("ViT-B-32",), record=record
    )
    assert parsed == ["ViT-B-32:openai"]  # the user's name, parsed once; no rebuilt name string
    identity = loaded.identity
    assert (identity.name, identity.weights, identity.substitute) == (
        "ViT-B-32:openai",
        "random",
        True,
    )
    assert identity.weights_file == placed and identity.seed == 0
    assert loaded.label == "ViT-B-32:openai (random weights, seed 0)"
    # the stand-in preprocesses exactly as the pretrained model it replaces (the tag's options)
    assert str(loaded.preprocess) == str(clip.load_model(f"{ARCH}:{placed}").preprocess)
    assert "OFFLINE SUBSTITUTE" in caplog.text  # logged: a CLI prints it on stderr
    (entry,) = record.fallbacks("clip")
    assert "random weights" in entry["what"] and "local file" in entry["reason"]

    again = clip.load_identity(identity, device="cpu")  # e.g. the notebook's text search
    assert again.identity == identity
    for key in ("visual.conv1.weight", "logit_scale"):
        assert torch.equal(again.model.state_dict()[key], loaded.model.state_dict()[key])


def test_load_identity_refuses_weights_that_changed(stage_dirs, random_b32):  # noqa: F811
    _, loaded = random_b32
    stale = dataclasses.replace(loaded.identity, weights_id="sha256:" + "0" * 64)
    with pytest.raises(clip.WeightsUnavailable, match="changed"):
        clip.load_identity(stale, device="cpu")


def test_strict_mode_refuses_the_random_stand_in(stage_dirs, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="ViT-B-32:openai"):
        clip.load_or_substitute("ViT-B-32:openai", device="cpu")


def test_profile_without_stand_in_skips_with_the_supply_hint(stage_dirs):  # noqa: F811
    with pytest.raises(clip.ArchitectureUnavailable, match="ViT-L-14-quickgelu:/path/to"):
        clip.load_or_substitute("ViT-L-14:openai", device="cpu", random_archs=("ViT-B-32",))


def test_labels_name_the_weights_identity_without_machine_paths():
    tag = clip.ModelIdentity("ViT-B-32:openai", "ViT-B-32-quickgelu", "pretrained", "tag:openai")
    assert tag.label == "ViT-B-32:openai"
    user_file = clip.ModelIdentity(
        "ViT-B-32:/home/me/weights/b32.bin",
        "ViT-B-32",
        "pretrained",
        "sha256:" + "ab" * 32,
        weights_file=Path("/home/me/weights/b32.bin"),
    )
    assert user_file.label == "ViT-B-32:b32.bin (sha256 abababababab)"


@needs_mirror()
@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_preprocessing_matches_hugging_face_clip_processor(random_b32, backend):
    """Our ViT-B/32 pixels vs CLIPProcessor's (openai/clip-vit-base-patch32 settings)."""
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _, loaded = random_b32
    processor_class = CLIPImageProcessor if backend == "torchvision" else CLIPImageProcessorPil
    hf = processor_class(**clip.HF_CLIP_B32_PREPROCESSING)
    names = list(MIRROR_KINDS) + sorted(p.name for p in (MIRROR / "images").iterdir())[::97]
    for name in names:
        path = MIRROR / "images" / name
        ours = loaded.preprocess(images.open_rgb(path)).numpy()
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
def test_real_weights_reproduce_the_reference_features(stage_dirs):  # noqa: F811
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
