"""Image variants as a VLM run setting: what the server is shown, the cache keys, the outputs."""

from __future__ import annotations

import base64
import hashlib
import io
import sqlite3

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microqa import config, provenance
from microqa.data import variants
from microqa.provenance import Record
from microqa.run import Run
from microqa.vlm import outputs, runner, stage
from microqa.vlm.cache import AnswerCache, AnswerKey
from tests.test_vlm_runner import env, stub  # noqa: F401  (fixtures)

FIELDS = ("openai", "m", "rev", "p" * 64, "i" * 64, "score", '{"letters":["A","B"]}')


def _run(stub, records, tmp_path, **settings):  # noqa: F811
    return runner.run_study(
        ["stub-vlm"],
        backend="openai",
        sample=runner.question_sample(records, 3),
        settings=runner.RunSettings(describe=False, rotate=False, **settings),
        cache_path=tmp_path / "cache.sqlite",
        backend_options={"base_url": stub.base_url},
        log=lambda *_: None,
    )


def test_the_original_keeps_its_old_key_and_a_variant_gets_its_own():
    old_formula = hashlib.sha256("\x1f".join(FIELDS).encode("utf-8")).hexdigest()
    assert AnswerKey(*FIELDS).key == old_formula
    assert AnswerKey(*FIELDS, "original").key == old_formula
    keys = {AnswerKey(*FIELDS, name).key for name in ("blank", "gray", "masked", "no_image")}
    assert len(keys) == 4 and old_formula not in keys


def test_a_cache_from_before_variants_opens_with_its_rows_as_original(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, backend TEXT NOT NULL, model_id TEXT NOT "
        "NULL, revision TEXT NOT NULL, prompt_hash TEXT NOT NULL, image_sha256 TEXT NOT NULL, "
        "mode TEXT NOT NULL, params TEXT NOT NULL, raw_text TEXT, choice TEXT, probabilities "
        "TEXT, latency_s REAL, visual_tokens INTEGER, created_at TEXT NOT NULL)"
    )
    key = AnswerKey(*FIELDS)
    conn.execute(
        "INSERT INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (key.key, *FIELDS, "A", "A", None, 0.1, 5, "2024-01-01"),
    )
    conn.commit()
    conn.close()
    with AnswerCache(path) as cache:
        assert cache.get_many([key])[key.key].choice == "A"
        assert cache.get_many([AnswerKey(*FIELDS, "blank")]) == {}
        variant = cache.db.execute("SELECT variant FROM answers").fetchone()[0]
    assert variant == "original"


def _shown(server) -> list[np.ndarray]:
    urls = server.image_parts()
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        for url in urls
    ]


def test_a_blank_run_shows_neutral_images_and_is_kept_apart(env, stub):  # noqa: F811
    tmp_path, records = env
    original = _run(stub, records, tmp_path)
    asked_original = len(stub.chat_requests())
    outputs.save_answers(original, fresh=True)
    blank = _run(stub, records, tmp_path, variant="blank")
    shown = _shown(stub)[asked_original:]
    assert shown and all(np.abs(image.astype(int) - 128).max() <= 2 for image in shown)
    assert len(stub.chat_requests()) - asked_original == len(blank.answers)  # none from cache
    outputs.save_answers(blank)
    assert set(outputs.load_answers()["variant"]) == {"original"}
    both = outputs.load_answers(variant=None)
    assert both.groupby("variant").size().to_dict() == {
        "blank": len(blank.answers),
        "original": len(original.answers),
    }
    outputs.save_answers(blank)  # a rerun of the variant replaces only its own rows
    assert len(outputs.load_answers(variant=None)) == len(both)


def test_answers_written_before_the_variant_column_read_as_original(env, stub):  # noqa: F811
    tmp_path, records = env
    outputs.save_answers(_run(stub, records, tmp_path), fresh=True)
    path = outputs.answers_path()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="variant")
    frame.to_csv(path, index=False)
    loaded = outputs.load_answers()
    assert len(loaded) == len(frame) and set(loaded["variant"]) == {"original"}


def test_unknown_variants_and_text_only_on_an_image_backend_are_refused(env, stub):  # noqa: F811
    tmp_path, records = env
    with pytest.raises(ValueError, match="unknown image variant 'sideways'"):
        runner.RunSettings(variant="sideways")
    with pytest.raises(ValueError, match="backend 'openai' .* cannot ask without an image"):
        _run(stub, records, tmp_path, variant="no_image")
    assert stub.chat_requests() == []


def test_the_controls_ask_the_robustness_sample_and_keep_the_main_runs_rows(env, stub):  # noqa: F811
    tmp_path, records = env
    profile = config.profile("smoke").with_overrides(
        vlm_models=["stub-vlm"], vlm_sample_size="all", robustness_sample_size=4
    )
    run = Run("04_vlm_qa", profile, provenance.Record.load())
    settings = runner.RunSettings(describe=False, rotate=False, contexts=("none",))
    main = runner.run_study(
        ["stub-vlm"],
        backend="openai",
        sample=runner.question_sample(records, "all"),
        settings=settings,
        backend_options={"base_url": stub.base_url},
        log=lambda *_: None,
    )
    outputs.save_answers(main, fresh=True)
    outputs.save_failures([{"micrograph_no": 1, "image_file": "images/x.jpg", "reason": "r"}])
    stage.run_variants(
        run, records, settings, backend="openai", base_url=stub.base_url, log=lambda *_: None
    )
    every = outputs.load_answers(variant=None)
    original = every[every["variant"] == "original"]
    assert len(original) == len(main.answers)  # merged, never replaced
    controls = every[every["variant"] != "original"]
    assert set(controls["variant"]) == {"blank", "hflip", "rot90", "gray", "masked"}
    expected = set(variants.robustness_sample(records, profile)["micrograph_no"])
    assert len(expected) == 4
    for _, asked in controls.groupby("variant"):
        assert set(asked["micrograph_no"]) == expected
        # the study's wording only (the earlier study's prompts are not asked), score mode
        assert set(asked["prompt_set"]) == {"study"} and set(asked["mode"]) == {"score"}
    assert outputs.failures_path().is_file()  # the main run's failure list stays
    section = Record.load().section("vlm_variants")
    assert sorted(section["images"]) == sorted(expected) and section["n"] == 4


def test_controls_need_the_study_wording():
    only_earlier = runner.RunSettings(jobs=(("category", "earlier_study"),))
    with pytest.raises(ValueError, match="ask the study's wording"):
        stage.control_settings(only_earlier)
    asked = stage.control_settings(runner.RunSettings(mode="generate", agreement_n=3))
    assert (asked.mode, asked.contexts, asked.describe, asked.agreement_n) == (
        "score",
        ("none",),
        False,
        0,
    )
