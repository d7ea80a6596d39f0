"""The shared visual prefix (microqa.vlm.prefix) answers exactly as the plain forward pass.

For every question the study asks about real micrographs (every task and prompt set, with and
without CLIP context, every option rotation), the letter probabilities and letter mass from one
image pass + one prefix prefill + each shared text segment (a CLIP context, a question stem)
prefilled once + batched tails equal those of a plain per-question forward
pass (batch 1, fp32) within 1e-4, for both tiny families. The tiny models' language-model
weights are sharpened so that their answers depend on token positions: the test checks that a
suffix placed one position off WOULD fail it.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from microqa import config
from microqa.data import dataset, images
from microqa.vlm import hf, prefix, questions, runner, tiny

TOLERANCE = 1e-4
TOPK = (
    "Hint from a CLIP image classifier (zero-shot; it can be wrong): its top 3 labels for this "
    "image are SEM (0.61), TEM (0.22), Optical (reflected) (0.09)."
)
NEIGHBOURS = (
    TOPK + "\n\nExpert annotations of the most similar images of other specimens in the "
    "DoITPoMS micrograph library (by CLIP image similarity):\n1. (similarity 0.91) Ferrite "
    "and pearlite in a 0.4 wt% C steel. Keywords: pearlite, ferrite, steel."
)


def real_micrographs(n: int):
    for folder in (config.shared_dir() / "doitpoms" / "images", config.sample_dir() / "images"):
        if folder.is_dir():
            paths = sorted(p for p in folder.iterdir() if p.is_file())
            if len(paths) >= n:
                return paths[: 7 * n : 7]  # spread over the library: sizes and formats differ
    pytest.skip("no real micrographs found")


def study_questions() -> tuple[list[str], list[list[str]]]:
    """Every question of a full run about one image: all jobs, contexts and rotations."""
    prompts, letters = [], []
    for task, prompt_set in questions.DEFAULT_JOBS:
        for context in (None, TOPK, NEIGHBOURS) if prompt_set == "study" else (None,):
            for rotation in questions.rotations(task, prompt_set):
                q = questions.build_question(
                    task, prompt_set, context_text=context, rotation=rotation
                )
                prompts.append(q.prompt)
                letters.append(list(q.letters))
    return prompts, letters


def sharpen(backend: hf.HFBackend, factor: float = 6.0) -> hf.HFBackend:
    with torch.no_grad():
        for name, weight in backend.model.named_parameters():
            if "language_model" in name and weight.ndim == 2 and "embed" not in name:
                weight.mul_(factor)
    return backend


@pytest.fixture(scope="module")
def sharp(tiny_dirs):
    torch.set_num_threads(1)
    return {
        family: sharpen(hf.HFBackend(path, prefix_batch=16)) for family, path in tiny_dirs.items()
    }


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_shared_prefix_equals_the_plain_forward_pass(family, sharp, monkeypatch):
    backend = sharp[family]
    prompts, letters = study_questions()
    assert len(prompts) == 36 and len({p for p in prompts}) == 36
    worst = {"probability": 0.0, "mass": 0.0}
    for path in real_micrographs(3):
        image = images.open_rgb(path)
        shared = backend.score_image(image, prompts, letters)
        plain = [
            backend._score_plain([hf.VLMRequest(image, p)], [x])[0]
            for p, x in zip(prompts, letters, strict=True)
        ]
        for s, p, x in zip(shared, plain, letters, strict=True):
            assert list(s.probabilities) == x
            for letter in x:
                diff = abs(s.probabilities[letter] - p.probabilities[letter])
                worst["probability"] = max(worst["probability"], diff)
            worst["mass"] = max(worst["mass"], abs(s.letter_mass - p.letter_mass))
            assert s.visual_tokens == p.visual_tokens > 0
    assert worst["probability"] < TOLERANCE and worst["mass"] < TOLERANCE, worst

    # The controls: tails, or shared segments, one position too far must fail the comparison.
    for name in ("suffix_logits", "extend"):
        real = getattr(prefix, name)

        def one_off(backend_, cache, length, deltas, tokens, real=real):
            return real(backend_, cache, length + 1, deltas, tokens)

        with monkeypatch.context() as patch:
            patch.setattr(prefix, name, one_off)
            off = backend.score_image(image, prompts, letters)
        drift = max(
            abs(o.probabilities[letter] - p.probabilities[letter])
            for o, p, x in zip(off, plain, letters, strict=True)
            for letter in x
        )
        assert drift > TOLERANCE, name


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_generate_mode_on_the_shared_prefix_writes_what_model_generate_writes(
    family, sharp, monkeypatch
):
    """Greedy answers decoded on top of the image prefix equal transformers' own `generate`,
    one question at a time, token for token (answers that stop early included); a decode step
    placed one position off would not."""
    backend = sharp[family]
    prompts, _ = study_questions()
    prompts += ["Describe this micrograph in one sentence.", "Short?"]
    tokens = 16
    for path in real_micrographs(2):
        image = images.open_rgb(path)
        shared = backend.generate_image(image, prompts, max_new_tokens=tokens)
        alone = [
            backend.generate([hf.VLMRequest(image.copy(), p)], max_new_tokens=tokens)[0]
            for p in prompts
        ]
        assert [s.text for s in shared] == [a.text for a in alone]
        assert [s.visual_tokens for s in shared] == [a.visual_tokens for a in alone]
    lengths = [len(backend.processor.tokenizer(a.text)["input_ids"]) for a in alone]
    assert len(set(lengths)) > 1  # some answers end before the token limit

    real = prefix._step

    def one_off(backend_, cache, mask, new, positions, deltas):
        return real(backend_, cache, mask, new, positions + (new.shape[1] == 1), deltas)

    monkeypatch.setattr(prefix, "_step", one_off)
    off = backend.generate_image(image, prompts, max_new_tokens=tokens)
    assert [o.text for o in off] != [a.text for a in alone]


def test_a_model_whose_greedy_search_is_not_plain_answers_through_model_generate(
    sharp, monkeypatch, caplog
):
    backend = sharp["qwen3_vl"]
    image = images.open_rgb(real_micrographs(1)[0])
    prompts = study_questions()[0][:4]
    monkeypatch.setattr(backend.model.generation_config, "repetition_penalty", 1.3)
    assert not prefix.plain_greedy(backend)
    calls = []
    real = backend.model.generate
    monkeypatch.setattr(backend.model, "generate", lambda **kw: calls.append(1) or real(**kw))
    answers = backend.generate_image(image, prompts, max_new_tokens=8)
    assert calls and len(answers) == len(prompts)
    said = [r.getMessage() for r in caplog.records if "model.generate" in r.getMessage()]
    assert len(said) == 1 and "repetition_penalty" in said[0]  # said once, naming the setting
    monkeypatch.setattr(backend.model.generation_config, "repetition_penalty", 1.0)
    assert prefix.plain_greedy(backend)


def _runs(segment, above=()):
    """{question index: (the shared segments it runs on, its tail)} under a plan."""
    above = (*above, segment.tokens) if segment.tokens else above
    out = {index: (above, tail) for index, tail in segment.tails}
    for child in segment.segments:
        out.update(_runs(child, above))
    return out


def test_the_plan_shares_each_context_and_each_question_stem(sharp):
    """The suffixes of one image form a tree: the CLIP context once for all the tasks and
    rotations asked with it, the question stem once for its rotations; each question still
    runs exactly its own tokens."""
    backend = sharp["qwen3_vl"]
    prompts, _ = study_questions()
    suffixes = [
        ids
        for _, ids in map(
            prefix.split_prompt, [backend] * 36, prefix.prompt_texts(backend, prompts)
        )
    ]
    runs = _runs(prefix.plan(suffixes))
    assert sorted(runs) == list(range(36))
    for index, (segments, tail) in runs.items():
        assert [t for segment in segments for t in segment] + tail == suffixes[index]
        assert tail  # the answer is read at the question's own last token
    tokenizer = backend.processor.tokenizer
    with_neighbours = [i for i, p in enumerate(prompts) if p.startswith(NEIGHBOURS)]
    assert len(with_neighbours) == 9  # two study tasks' rotations
    # Every question asked with the neighbours' context runs that context as shared segments
    # (the top-k hint, also shared with the top-k questions, then the annotations), then its
    # question stem, shared by its rotations only.
    contexts = {tuple(t for s in runs[i][0][:-1] for t in s) for i in with_neighbours}
    assert len(contexts) == 1, "the context is not shared once"
    assert "Expert annotations" in tokenizer.decode(list(contexts.pop()))
    stems = [tuple(runs[i][0][-1]) for i in with_neighbours]
    assert len(set(stems)) == 2 and all(stems.count(s) >= 4 for s in stems)
    assert all(len(runs[i][0]) >= 2 for i in with_neighbours)  # context, then the stem
    assert prefix.planned_tokens(prefix.plan(suffixes)) < sum(map(len, suffixes)) / 2
    # A segment that would save fewer tokens than a forward call costs stays in the tails.
    short = prefix.plan([[1, 2, 3, 9], [1, 2, 3, 8]])
    assert not short.segments and [t for _, t in short.tails] == [[1, 2, 3, 9], [1, 2, 3, 8]]
    with pytest.raises(prefix.PrefixError, match="no tokens"):
        prefix.plan([[1], []])


def test_prompt_splits_after_the_image_into_the_plain_tokens(sharp):
    for backend in sharp.values():
        image = images.open_rgb(real_micrographs(1)[0])
        text = backend._prompt_text(hf.VLMRequest(image, "Context first.\n\nQ? A) x B) y"))
        prefix_text, suffix = prefix.split_prompt(backend, text)
        tokenizer = backend.processor.tokenizer
        assert tokenizer(prefix_text)["input_ids"] + suffix == tokenizer(text)["input_ids"]
        assert "Context first." not in prefix_text  # per-question text comes after the image
        with pytest.raises(prefix.PrefixError, match="no image placeholder"):
            prefix.split_prompt(backend, "no image here")


def _dataset_of_real_micrographs(root, n=4):
    """The embedded sample's records for n real micrographs, as a dataset folder."""
    source = config.sample_dir()
    records = pd.read_csv(source / "records.csv", dtype=str, keep_default_na=False)
    (root / "images").mkdir(parents=True)
    kept = []
    for _, row in records.iterrows():
        image = images.find_image(source, int(row["micrograph_no"]))
        if image is None or "SEM" not in row["technique"] and "light" not in row["technique"]:
            continue
        shutil.copy(image, root / "images" / image.name)
        kept.append(row)
        if len(kept) == n:
            break
    pd.DataFrame(kept).to_csv(root / "records.csv", index=False)
    return root


def test_answers_csv_from_the_shared_prefix_equals_the_plain_path(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    records = dataset.load_records(_dataset_of_real_micrographs(tmp_path / "ds"))
    sample = runner.question_sample(records, "all")
    settings = runner.RunSettings(describe=False)
    frames = {}
    for shared in (True, False):
        result = runner.run_study(
            [str(tiny_dirs["qwen3_vl"])],
            backend="hf",
            sample=sample,
            settings=settings,
            cache_path=tmp_path / f"cache-{shared}.sqlite",
            backend_options={"shared_prefix": shared, "prefix_batch": 8},
            log=lambda *_: None,
        )
        runner.save_answers(result, fresh=True)
        frames[shared] = runner.load_answers()
    shared, plain = frames[True], frames[False]
    assert len(shared) == len(plain) > 0 and set(shared["rotation"]) == set(range(5))
    text_columns = ["micrograph_no", "task", "context", "prompt_set", "rotation", "permutation"]
    pd.testing.assert_frame_equal(shared[text_columns], plain[text_columns])
    assert (shared["prediction"] == plain["prediction"]).all()
    assert (shared["visual_tokens"] == plain["visual_tokens"]).all()
    for a, b in zip(shared["probabilities"], plain["probabilities"], strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < TOLERANCE
    assert (shared["letter_mass"] - plain["letter_mass"]).abs().max() < TOLERANCE
