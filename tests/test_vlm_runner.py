"""The VLM runner end to end over a real dataset directory, the answer cache and the stub server;
CLIP context without leakage; SIGKILL-and-resume in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from PIL import Image

from microqa import provenance
from microqa.data import dataset, taxonomy
from microqa.vlm import questions, report, runner, scoring
from microqa.vlm.cache import Answer, AnswerCache, AnswerKey
from microqa.vlm.context import ClipContext
from microqa.vlm.openai_backend import fit_to_budget, image_data_url
from microqa.vlm.questions import build_question
from tests.conftest import REPO
from tests.openai_stub import OpenAIStub, deterministic_letter, request_text_and_image
from tests.vlm_data import make_clip_outputs, make_dataset

JOB_TASKS = {
    "technique": "technique_family",
    "category": "primary_category",
    "technique_coarse": "technique_coarse",
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("STRICT", raising=False)
    records = dataset.load_records(make_dataset(tmp_path / "ds"))
    return tmp_path, records


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


def _run(stub, records, tmp_path, **settings):
    sample = runner.question_sample(records, "all")
    return runner.run_study(
        ["stub-vlm"],
        backend="openai",
        sample=sample,
        settings=runner.RunSettings(**settings),
        cache_path=tmp_path / "cache.sqlite",
        backend_options={"base_url": stub.base_url, "concurrency": 2},
        log=lambda *_: None,
        context=settings.get("contexts") and ClipContext(records),
    )


def test_sample_excludes_other_family_and_runs_every_job(env, stub):
    tmp_path, records = env
    result = _run(stub, records, tmp_path, describe=False)
    answers = result.answers
    sample_size = len(runner.question_sample(records, "all"))
    # every record some task can score: the two photographs (family Other) get the material
    # questions only, the two "Device" records (no primary category) the technique ones only
    assert sample_size == 18
    counts = answers.groupby(["task", "prompt_set"]).size().to_dict()
    # The "Device" specimen (2 images) has no primary category: skipped and reported.
    # every cyclic rotation of the options is asked: 5 technique options, 4 study categories,
    # 4 coarse techniques and the earlier study's 5 categories (with "Fracture")
    assert counts == {
        ("category", "earlier_study"): 16 * 5,
        ("category", "study"): 16 * 4,
        ("technique", "study"): 16 * 5,
        ("technique_coarse", "earlier_study"): 16 * 4,
    }
    rotations = answers.groupby(["micrograph_no", "task", "prompt_set"])["rotation"]
    assert (rotations.nunique() == rotations.size()).all()  # each rotation once per question
    for (task, prompt_set), group in answers.groupby(["task", "prompt_set"]):
        k = len(questions.prompt_set(task, prompt_set).option_text)
        assert set(group["rotation"]) == set(range(k))
        # rotation r shows the taxonomy order shifted by r: every class under every letter
        for row in group.itertuples():
            assert (
                row.permutation
                == build_question(task, prompt_set, rotation=row.rotation).permutation
            )
    assert {s["reason"] for s in result.skipped} == {
        "no primary_category label",
        "no technique_family label",
        "no technique_coarse label",
    }
    assert len(stub.chat_requests()) == len(answers)
    for row in answers.itertuples():
        truth = records.set_index("micrograph_no").loc[row.micrograph_no, JOB_TASKS[row.task]]
        assert row.truth == truth
        probs = json.loads(row.probabilities)
        # every option offered gets a probability: the task's classes (plus the earlier
        # study's "Fracture" distractor, which no primary label matches)
        offered = questions.prompt_set(row.task, row.prompt_set).option_text
        assert set(probs) == set(offered) >= set(taxonomy.TASKS[row.task][1])
        assert row.prediction == max(probs, key=probs.get)
    assert (answers["model"] == "stub-vlm").all() and (answers["weights"] == "pretrained").all()
    assert not answers["cached"].any()


def test_rerun_reads_everything_from_the_cache(env, stub):
    tmp_path, records = env
    first = _run(stub, records, tmp_path, mode="generate")
    asked = len(stub.chat_requests())
    second = _run(stub, records, tmp_path, mode="generate")
    assert len(stub.chat_requests()) == asked  # nothing asked again
    assert second.answers["cached"].all() and second.descriptions["cached"].all()
    pd.testing.assert_frame_equal(
        first.answers.drop(columns="cached"), second.answers.drop(columns="cached")
    )


def test_reworded_questions_reach_the_server_and_are_asked_anew(env, stub):
    tmp_path, records = env
    jobs = (("category", "study"),)
    first = _run(stub, records, tmp_path, describe=False, jobs=jobs, rotate=False)
    asked_before = len(stub.chat_requests())
    wording = {"category": {"question": "Which material is this, in one letter?"}}
    again = _run(stub, records, tmp_path, describe=False, jobs=jobs, rotate=False, wording=wording)
    texts = [request_text_and_image(b)[0] for b in stub.chat_requests()[asked_before:]]
    assert len(texts) == len(first.answers) == len(again.answers) > 0  # none from the cache
    reworded = "Which material is this, in one letter?\nA) Metal or alloy"
    assert all(text.startswith(reworded) for text in texts)
    assert (again.answers["cached"] == False).all()  # noqa: E712 (a column of bools)


def test_generate_mode_parses_the_stubs_sentences(env, stub):
    tmp_path, records = env
    result = _run(stub, records, tmp_path, mode="generate", permute=True, seed=3)
    answers = result.answers
    assert (answers["raw_text"].str.startswith("The answer is ")).all()
    assert (answers["probabilities"] == "").all()
    assert answers["prediction"].notna().all()
    # With permuted options, the predicted class is the one the stub's letter pointed at.
    asked = {request_text_and_image(b): b for b in stub.chat_requests()}
    for row in answers.itertuples():
        q = build_question(
            row.task,
            row.prompt_set,
            permute=True,
            seed=3,
            image_key=str(row.micrograph_no),
            rotation=row.rotation,
        )
        assert q.permutation == row.permutation
        path = records.set_index("micrograph_no").loc[row.micrograph_no, "image_path"]
        with Image.open(path) as image:
            url = image_data_url(fit_to_budget(image, None))
        assert row.prediction == q.class_of(deterministic_letter(asked[(q.prompt, url)]))
    assert answers.groupby("task")["permutation"].nunique().min() > 1
    # The descriptive question: the stub describes an SEM image of steel.
    descriptions = result.descriptions
    assert len(descriptions) == 18
    assert (descriptions["technique_pred"] == taxonomy.SEM).all()
    assert (descriptions["category_pred"] == taxonomy.METAL).all()


def test_agreement_subset_is_asked_in_the_other_mode_by_the_loaded_model(env, stub, monkeypatch):
    tmp_path, records = env
    loaded = []
    real_open = runner.open_model
    monkeypatch.setattr(
        runner,
        "open_model",
        lambda backend, model, **o: loaded.append(model) or real_open(backend, model, **o),
    )
    answers = _run(stub, records, tmp_path, describe=False, agreement_n=4, seed=5).answers
    assert loaded == ["stub-vlm"]  # one load answers both modes
    sample = runner.question_sample(records, "all")
    subset = runner.question_sample(sample, 4, seed=5)
    main, other = answers[answers["mode"] == "score"], answers[answers["mode"] == "generate"]
    assert set(main["micrograph_no"]) == set(sample["micrograph_no"])
    assert set(other["micrograph_no"]) == set(subset["micrograph_no"])
    asked = ["micrograph_no", "task", "prompt_set", "context", "rotation"]
    on_subset = main[main["micrograph_no"].isin(subset["micrograph_no"])]
    assert sorted(map(tuple, other[asked].to_numpy())) == sorted(
        map(tuple, on_subset[asked].to_numpy())
    )
    with pytest.raises(ValueError, match="agreement_n"):
        runner.RunSettings(agreement_n=-1)


def test_clip_context_variants_and_no_leakage(env, stub):
    tmp_path, records = env
    make_clip_outputs(
        tmp_path / "build" / "clip", list(records["micrograph_no"]), list(records["specimen_group"])
    )
    context = ClipContext(records)
    for mno, group in zip(records["micrograph_no"], records["specimen_group"], strict=True):
        near = context.neighbours(mno)
        assert len(near) == 3
        assert mno not in set(near["micrograph_no"])
        assert group not in set(near["specimen_group"])  # not even its near-duplicate twin
    result = _run(
        stub, records, tmp_path, contexts=("none", "clip_topk", "clip_neighbours"), describe=False
    )
    study = result.answers[result.answers["prompt_set"] == "study"]
    per_context = 16 * 5 + 16 * 4  # technique and category questions, every rotation
    assert study.groupby("context").size().to_dict() == {
        "clip_neighbours": per_context,
        "clip_topk": per_context,
        "none": per_context,
    }
    by_text = {request_text_and_image(b)[0]: b for b in stub.chat_requests()}
    for text in by_text:
        if "Expert annotations" in text:
            assert "Hint from a CLIP image classifier" in text
    for row in study[study["context"] == "clip_neighbours"].itertuples():
        own = records.set_index("micrograph_no").loc[row.micrograph_no, "brief_description"]
        prompt = next(
            t
            for t in by_text
            if "Expert annotations" in t
            and context.render("clip_neighbours", row.micrograph_no, row.task) in t
        )
        assert own not in prompt
    assert context.substitute_labels() == ["random CLIP weights in context"]


def test_missing_clip_outputs_skip_the_context_with_a_reason(env, stub):
    tmp_path, records = env
    result = _run(stub, records, tmp_path, contexts=("none", "clip_topk"), describe=False)
    assert set(result.answers["context"]) == {"none"}
    reasons = [s["reason"] for s in result.skipped if s["context"] == "clip_topk"]
    assert reasons and all("no CLIP zero-shot scores" in r for r in reasons)


def test_cache_stores_a_question_once_and_keys_on_every_parameter(tmp_path):
    key = AnswerKey("hf", "m", "rev1", "p" * 64, "i" * 64, "score", '{"letters":["A","B"]}')
    answer = Answer("A", "A", {"A": 0.7, "B": 0.3}, 0.1, 64)
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        assert cache.put_many([(key, answer)]) == 1
        assert cache.put_many([(key, Answer("B", "B", None, 9.0, 1))]) == 0  # kept the first
        assert cache.get_many([key])[key.key] == answer
        other = AnswerKey(*[*key.__dict__.values()][:2], "rev2", *[*key.__dict__.values()][3:])
        assert cache.get_many([other]) == {}
        assert cache.count() == 1


def test_corrupt_cache_file_is_moved_aside_named_and_rebuilt(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    garbage = b"this is not a database" * 100
    bad.write_bytes(garbage)
    key = AnswerKey("hf", "m", "rev1", "p" * 64, "i" * 64, "score", "{}")
    with AnswerCache(bad) as cache:
        assert cache.count() == 0 and cache.put_many([(key, Answer("A", "A", None, 0.1, 1))])
    (aside,) = tmp_path.glob("bad.sqlite.corrupt-*[0-9]")
    err = capsys.readouterr().err
    assert "bad.sqlite" in err and aside.name in err and "moved it aside" in err
    assert aside.read_bytes() == garbage  # the unreadable file is kept, not overwritten
    with AnswerCache(bad) as cache:
        assert cache.count() == 1
    assert "moved" not in capsys.readouterr().err


def test_undecodable_images_are_skipped_named_once_and_listed(env, stub, capsys):
    tmp_path, records = env
    sample = runner.question_sample(records, "all")
    broken, truncated = sample["image_path"].iloc[0], sample["image_path"].iloc[3]
    with open(broken, "wb") as fh:
        fh.write(b"not an image")
    data = open(truncated, "rb").read()
    with open(truncated, "wb") as fh:
        fh.write(data[: len(data) // 3])
    result = _run(stub, records, tmp_path, describe=True, mode="generate")
    bad = {int(sample["micrograph_no"].iloc[0]), int(sample["micrograph_no"].iloc[3])}
    assert {f["micrograph_no"] for f in result.failures} == bad
    assert {f["image_file"] for f in result.failures} == {
        f"images/{os.path.basename(broken)}",
        f"images/{os.path.basename(truncated)}",
    }
    err = capsys.readouterr().err
    for f in result.failures:
        assert err.count(f"failed: {f['micrograph_no']} {f['image_file']}: ") == 1
    assert set(result.answers["micrograph_no"]) == set(sample["micrograph_no"]) - bad
    assert set(result.descriptions["micrograph_no"]) == set(sample["micrograph_no"]) - bad
    runner.save_answers(result, fresh=True)
    listed = pd.read_csv(tmp_path / "build" / "vlm" / "failures.csv")
    assert list(listed.columns) == ["micrograph_no", "image_file", "reason"]
    assert set(listed["micrograph_no"]) == bad


def test_unloadable_hub_model_is_substituted_loudly_or_refused_under_strict(env, monkeypatch):
    pytest.importorskip("microqa.vlm.tiny")  # the tiny models come with the hf backend
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in runner._hub_reason("Qwen/Qwen3-VL-8B-Instruct")
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError):
        runner.open_model("hf", "Qwen/Qwen3-VL-8B-Instruct")


def _cli(tmp_path, stub, cache, extra=()):
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'lib'}:{REPO}",
        "MICROQA_BUILD": str(tmp_path / "build"),
        "MICROQA_DATA": str(tmp_path / "data"),
    }
    cmd = [
        sys.executable,
        "-m",
        "microqa",
        "vlm",
        "--backend",
        "openai",
        "--model",
        "stub-vlm",
        "--base-url",
        stub.base_url,
        "--dataset",
        str(tmp_path / "ds"),
        "--n",
        "all",
        "--tasks",
        "technique/study,category/study",
        "--no-describe",
        "--concurrency",
        "2",
        "--cache",
        str(cache),
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _rows(cache) -> int:
    if not cache.exists():
        return 0
    with sqlite3.connect(cache) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_sigkill_and_rerun_answers_every_question_exactly_once(env):
    tmp_path, records = env
    cache = tmp_path / "kill.sqlite"
    per_image = 5 + 4  # technique + category questions about one image, every rotation
    total = 16 * 5 + 16 * 4
    with OpenAIStub(delay_s=0.05) as stub:
        proc = _cli(tmp_path, stub, cache)
        deadline = time.time() + 60
        while _rows(cache) < per_image and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored = _rows(cache)
        asked_before = len(stub.chat_requests())
        assert per_image <= stored < total
        # only the images in flight were lost: at most one per request slot (--concurrency 2)
        assert asked_before - stored <= 2 * per_image

        rerun = _cli(tmp_path, stub, cache)
        output = rerun.communicate(timeout=120)[0]
        assert rerun.returncode == 0, output
        asked_after = len(stub.chat_requests()) - asked_before
    assert asked_after == total - stored  # nothing stored was asked again, nothing skipped
    assert _rows(cache) == total
    answers = runner.load_answers(tmp_path / "build" / "vlm" / "answers.csv")
    assert len(answers) == total
    assert not answers.duplicated(
        ["micrograph_no", "task", "prompt_set", "context", "rotation"]
    ).any()
    assert answers["cached"].sum() == stored
    assert answers["prediction"].notna().all()


def test_report_tables_agree_with_what_the_server_answered(env, stub):
    tmp_path, records = env
    result = _run(stub, records, tmp_path, mode="generate", permute=True, seed=1)
    runner.save_answers(result, fresh=True)
    answers = runner.load_answers()
    qa = report.qa_table(answers, records=records, n_boot=50)
    assert len(qa) == 4 and (qa["unparseable_rate"] == 0).all()
    # one decision per image (its rotations combined), scored against the truth
    decided = scoring.decisions(answers, records=records)
    for row in qa.itertuples():
        group = decided[(decided["task"] == row.task) & (decided["prompt_set"] == row.prompt_set)]
        assert row.n == group["micrograph_no"].nunique() == len(group)
        assert row.accuracy == pytest.approx((group["truth"] == group["prediction"]).mean())
        assert row.accuracy_ci_low <= row.accuracy <= row.accuracy_ci_high
    bias = report.position_bias_table(answers)
    tech = bias[(bias["task"] == "technique")].set_index("position")
    assert tech["chosen_share"].sum() == pytest.approx(1.0)
    assert tech["truth_share"].sum() == pytest.approx(1.0)
    # Independently, from the server's log: which letters did it answer for this question?
    asked = [
        deterministic_letter(b)
        for b in stub.chat_requests()
        if "Which imaging technique" in request_text_and_image(b)[0]
    ]
    for position in tech.index:
        assert tech.loc[position, "chosen_share"] == pytest.approx(
            asked.count(position) / len(asked)
        )


def test_unparseable_answers_count_as_wrong_never_guessed(env):
    tmp_path, records = env
    with OpenAIStub(choice_template="Either {letter} or A, hard to say.") as stub:
        result = _run(stub, records, tmp_path, mode="generate", describe=False)
    answers = result.answers
    assert answers["prediction"].isna().all()
    qa = report.qa_table(answers, records=records, n_boot=20)
    assert (qa["accuracy"] == 0).all() and (qa["unparseable_rate"] == 1).all()


def test_saving_merges_models_and_replaces_a_rerun_model(env, stub):
    tmp_path, records = env
    runner.save_answers(_run(stub, records, tmp_path, describe=False), fresh=True)
    with OpenAIStub(model="other-vlm") as other:
        second = runner.run_study(
            ["other-vlm"],
            backend="openai",
            sample=runner.question_sample(records, 4),
            settings=runner.RunSettings(describe=False),
            cache_path=tmp_path / "c2.sqlite",
            backend_options={"base_url": other.base_url},
            log=lambda *_: None,
        )
    runner.save_answers(second)
    merged = runner.load_answers()
    assert merged.groupby("model").size().to_dict() == {
        "other-vlm": len(second.answers),
        "stub-vlm": 16 * 5 + 16 * 4 + 16 * 4 + 16 * 5,
    }
    runner.save_answers(second)  # rerunning a model replaces its rows, never duplicates them
    assert len(runner.load_answers()) == len(merged)


def test_cli_exit_codes_bad_images_one_and_bad_input_two(env):
    tmp_path, records = env
    sample = runner.question_sample(records, "all")
    with open(sample["image_path"].iloc[0], "wb") as fh:
        fh.write(b"")  # zero-byte image
    cache = tmp_path / "cli.sqlite"
    with OpenAIStub() as stub:
        proc = _cli(tmp_path, stub, cache, ["--fixed-order"])
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1, output
        assert output.count("failed: ") == 1 and "Traceback" not in output
        answers = runner.load_answers(tmp_path / "build" / "vlm" / "answers.csv")
        assert len(answers) == 15 + 15 and (answers["rotation"] == 0).all()
        for extra in (["--tasks", "technique/nonsense"], ["--n", "lots"]):
            proc = _cli(tmp_path, stub, cache, extra)
            output = proc.communicate(timeout=120)[0]
            assert proc.returncode == 2, output
            assert output.startswith("error: ") and len(output.strip().splitlines()) == 1


def test_server_failures_are_listed_never_cached_and_asked_again(env, stub):
    """A reply that stays malformed after every retry is a failed question: named in the
    stage's failures, not stored as "no answer" in the cache, and asked again by a rerun."""
    tmp_path, records = env
    sample = runner.question_sample(records, 2)

    def run():
        return runner.run_study(
            ["stub-vlm"],
            backend="openai",
            sample=sample,
            settings=runner.RunSettings(describe=False, jobs=(("technique", "study"),)),
            cache_path=tmp_path / "cache.sqlite",
            backend_options={"base_url": stub.base_url, "concurrency": 1, "retries": 0},
            log=lambda *_: None,
        )

    stub.garbage_next(3, "html")
    first = run()
    assert len(first.answers) == 2 * 5 - 3  # two images, five rotations, three lost
    assert len(first.failures) == 1 and "3 questions unanswered" in first.failures[0]["reason"]
    second = run()  # the server answers now: only the three lost questions are asked again
    assert len(second.answers) == 2 * 5 and (~second.answers["cached"]).sum() == 3
    assert not second.failures
