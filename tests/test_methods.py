"""Methods as data: CLIP score tables become methods, identities become the labels readers see."""

from __future__ import annotations

import pandas as pd
import pytest

from microqa.compare import methods
from microqa.data import taxonomy

SEM, TEM, AFM = taxonomy.SEM, taxonomy.TEM, taxonomy.AFM
R, T = taxonomy.OPTICAL_REFLECTED, taxonomy.OPTICAL_TRANSMITTED
QWEN, LLAVA = "Qwen/Qwen3-VL-8B-Instruct", "llava-hf/llava-v1.6-mistral-7b-hf"
REFERENCE = "reference ViT-B/32 (pretrained)"


@pytest.mark.parametrize(
    "model, shown",
    [
        (QWEN, "Qwen3-VL-8B-Instruct"),  # a hub id by its name
        ("/somewhere/on/disk/Qwen2-VL-2B", "Qwen2-VL-2B"),  # never a machine path
        ("ViT-B-32:openai", "ViT-B-32:openai"),  # open_clip ARCH:PRETRAINED, no slash
        ("ViT-B-32:/home/me/weights/b32.pt", "ViT-B-32:b32.pt"),  # ARCH:/local/file
        ("ViT-L-14:../models/l14.safetensors", "ViT-L-14:l14.safetensors"),
        ("ViT-B-32:clip_b32.bin", "ViT-B-32:clip_b32.bin"),
        ("ViT-B-32:/srv/b32.ckpt", "ViT-B-32:b32.ckpt"),  # a path by its start alone
        ("ViT-B-32:~/weights/b32.ckpt", "ViT-B-32:b32.ckpt"),
        ("ViT-B-32:./b32.ckpt", "ViT-B-32:b32.ckpt"),
        ("probe:ViT-B-32:/srv/w/b32.pt", "probe:ViT-B-32:b32.pt"),  # a probe on those features
        ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub:timm/ViT-B-16-SigLIP"),  # the scheme names it
        (REFERENCE, REFERENCE),  # a readable name whose "/" is not a path
    ],
)
def test_short_name(model, shown):
    assert methods.short_name(model) == shown


def _identity(kind, model, *, base="", context="", mode="", prompt_set="", partner=""):
    return dict(
        kind=kind,
        base=base,
        model=model,
        weights="pretrained",
        context=context,
        mode=mode,
        prompt_set=prompt_set,
        partner=partner,
    )


# Each label composed by hand from the rules of `label`; the ones of the study's methods are the
# labels of tables/comparison.csv.
LABELS = [
    (
        _identity("clip_zero_shot", "ViT-B-32:openai", prompt_set="cross-fitted"),
        "CLIP ViT-B-32:openai zero-shot",
    ),
    (
        _identity("clip_probe", REFERENCE, prompt_set="logreg-grouped-cv"),
        "CLIP logistic probe (reference ViT-B/32 (pretrained))",
    ),
    (
        _identity("clip_probe", REFERENCE, prompt_set="knn-grouped-cv"),
        "CLIP 5-NN probe (reference ViT-B/32 (pretrained))",
    ),
    # a probe without a reader's name is shown by its own name
    (_identity("clip_probe", "ViT-B-32:openai", prompt_set="svm"), "CLIP svm (ViT-B-32:openai)"),
    (
        _identity("vlm", QWEN, context="none", mode="score", prompt_set="study"),
        "Qwen3-VL-8B-Instruct",
    ),
    (
        _identity("vlm", LLAVA, context="clip_topk", mode="generate", prompt_set="study"),
        "llava-v1.6-mistral-7b-hf + CLIP top-k labels (generated)",
    ),
    (
        _identity("vlm", QWEN, context="clip_neighbours", mode="score", prompt_set="study"),
        "Qwen3-VL-8B-Instruct + retrieved expert metadata of nearest other specimens (supervised)",
    ),
    (
        _identity("vlm", QWEN, context="none", mode="generate", prompt_set="earlier_study"),
        "Qwen3-VL-8B-Instruct (generated), earlier study's prompt",
    ),
    # a context the table does not know is named as it is
    (
        _identity("vlm", QWEN, context="captions", mode="score", prompt_set="study"),
        "Qwen3-VL-8B-Instruct + captions",
    ),
    # hybrids: the CLIP stage's label, then the partner VLM (not the CLIP model) with its setting
    (
        _identity(
            "cascade",
            "ViT-B-32:openai",
            base="clip_zero_shot",
            context="none",
            mode="generate",
            prompt_set="cross-fitted",
            partner=QWEN,
        ),
        "cascade CLIP ViT-B-32:openai zero-shot → Qwen3-VL-8B-Instruct (generated)",
    ),
    (
        _identity(
            "fusion",
            REFERENCE,
            base="clip_probe",
            context="none",
            mode="score",
            prompt_set="knn-grouped-cv",
            partner=LLAVA,
        ),
        "fusion CLIP 5-NN probe (reference ViT-B/32 (pretrained)) → llava-v1.6-mistral-7b-hf",
    ),
]


@pytest.mark.parametrize("identity, shown", LABELS)
def test_label_is_derived_from_the_identity(identity, shown):
    assert methods.label(identity) == shown


def test_restricted_keeps_predictions_and_probabilities_of_the_same_images():
    ids = pd.Index([1, 2, 3])
    probs = pd.DataFrame([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], index=ids, columns=["x", "y"])
    scored = methods.Method("clip_zero_shot", "technique", "m", methods.argmax(probs), probs)
    kept = scored.restricted([3, 1])
    assert list(kept.predictions.items()) == [(3, "x"), (1, "x")]
    assert kept.probabilities.index.tolist() == [3, 1]
    assert kept.probabilities.loc[3].tolist() == [0.6, 0.4]
    # a generating VLM has answers but no probabilities
    generated = methods.Method("vlm", "technique", "v", pd.Series(["y", "y", "x"], index=ids))
    kept = generated.restricted([2, 3])
    assert kept.probabilities is None
    assert list(kept.predictions.items()) == [(2, "y"), (3, "x")]


def _scores(model, weights, task, prompt_set, probabilities: dict[int, dict[str, float]]):
    """The long score table of clip/outputs.py (SCORE_COLUMNS)."""
    return pd.DataFrame(
        [
            dict(
                micrograph_no=no,
                model=model,
                weights=weights,
                task=task,
                prompt_set=prompt_set,
                probability=p,
                **{"class": c},
            )
            for no, row in probabilities.items()
            for c, p in row.items()
        ]
    )


def test_zero_shot_scores_become_one_method_per_model_weights_task_and_prompt_set():
    model = "ViT-B-32:openai"
    scores = pd.concat(
        [
            # classes listed out of the task's order, and some not scored at all (probability 0)
            _scores(model, "pretrained", "technique", "ensemble", {1: {TEM: 0.3, SEM: 0.6}}),
            _scores(model, "pretrained", "technique", "ensemble", {2: {T: 0.7, R: 0.2}}),
            # the same name with random weights is another method, not averaged into this one
            _scores(model, "random", "technique", "ensemble", {1: {AFM: 0.9}, 2: {AFM: 0.8}}),
            # not a single-label task (sorted before "technique"): skipped, the rest still read
            _scores(model, "pretrained", "category_multi", "ensemble", {1: {"Metal or alloy": 1}}),
        ]
    )
    timing = {model: {"seconds_per_image": 0.25, "device": "cpu", "n": 2}}
    found = methods.clip_methods(scores, timing, kind="clip_zero_shot")
    assert [(m.kind, m.model, m.weights, m.task, m.prompt_set) for m in found] == [
        ("clip_zero_shot", model, "pretrained", "technique", "ensemble"),
        ("clip_zero_shot", model, "random", "technique", "ensemble"),
    ]
    pretrained, random = found
    assert pretrained.probabilities.columns.tolist() == list(taxonomy.TECHNIQUE_FAMILIES)
    assert pretrained.probabilities.index.tolist() == [1, 2]
    # columns SEM, TEM, AFM, reflected, transmitted
    assert pretrained.probabilities.to_numpy().tolist() == [
        [0.6, 0.3, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.2, 0.7],
    ]
    assert pretrained.predictions.tolist() == [SEM, T]
    assert random.predictions.tolist() == [AFM, AFM]
    assert pretrained.seconds_per_image == random.seconds_per_image == 0.25


def test_probe_methods_are_named_by_their_features_and_cost_one_clip_pass():
    sources = [
        REFERENCE,  # the reference ViT-B/32 features
        "ViT-B-32:openai (random weights)",  # the study's own ViT-B-32 features
        "ViT-L-14:openai",  # another architecture: no ViT-B-32 timing stands in for it
    ]
    scores = pd.concat(
        [
            _scores(f"probe:{source}", "pretrained", "technique", "logreg-grouped-cv", {7: {R: 1}})
            for source in sources
        ]
    )
    # the ViT-B-32 entry is not the first: the cost is the same architecture's, not any model's
    timing = {
        "ViT-L-14-336:openai": {"seconds_per_image": 0.5},
        "ViT-B-32:openai": {"seconds_per_image": 0.1},
    }
    found = methods.clip_methods(scores, timing, kind="clip_probe")
    cost = {m.model: m.seconds_per_image for m in found}
    assert cost == {
        REFERENCE: 0.1,
        "ViT-B-32:openai (random weights)": 0.1,
        "ViT-L-14:openai": None,
    }
    assert {m.prompt_set for m in found} == {"logreg-grouped-cv"}
    assert {m.kind for m in found} == {"clip_probe"}
    assert [m.predictions.tolist() for m in found] == [[R]] * 3
    # without any ViT-B-32 timing the cost is unknown, not borrowed from another architecture
    found = methods.clip_methods(
        scores, {"ViT-L-14-336:openai": {"seconds_per_image": 0.5}}, kind="clip_probe"
    )
    assert [m.seconds_per_image for m in found] == [None] * 3


def test_an_untimed_zero_shot_model_has_no_cost():
    # only probes borrow a timing (their features' pass); a zero-shot model is measured itself
    scores = _scores("ViT-B-32:laion2b", "pretrained", "technique", "ensemble", {1: {SEM: 1}})
    timing = {"ViT-B-32:openai": {"seconds_per_image": 0.1}}
    (found,) = methods.clip_methods(scores, timing, kind="clip_zero_shot")
    assert found.seconds_per_image is None


def test_no_scores_no_methods():
    assert methods.clip_methods(pd.DataFrame(), {}, kind="clip_probe") == []
