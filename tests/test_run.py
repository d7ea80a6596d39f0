"""run.py: the run object handed from notebook to library: its profile with the notebook's
overrides, its dataset from notebook 01's record, its provenance, its variant folder; and that
no other module reads the provenance file or keeps run state."""

from __future__ import annotations

import re

import pytest

from microqa import config, provenance
from microqa.clip import prompts
from microqa.data import taxonomy
from microqa.run import Run, RunError
from tests.conftest import REPO


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.delenv("MICROQA_PROFILE", raising=False)
    monkeypatch.delenv("STRICT", raising=False)
    return tmp_path / "build"


def test_the_run_resolves_its_profile_from_the_notebooks_parameters(build):
    run = Run.start("03_clip_zero_shot", "smoke", clip_models='["RN50:openai"]', n_boot=None)
    assert run.profile.name == "smoke" and run.profile.clip_models == ("RN50:openai",)
    assert run.n_boot == config.profile("smoke").n_boot  # None keeps the profile's
    assert run.overrides == {"clip_models": ("RN50:openai",)}
    assert re.fullmatch(r"v[0-9a-f]{8}", run.variant)
    assert Run.start("03_clip_zero_shot", "smoke").variant == ""
    with pytest.raises(RunError, match="03_clip_zero_shot: unknown profile setting 'models'"):
        Run.start("03_clip_zero_shot", "smoke", models='["RN50:openai"]')


def test_the_dataset_is_notebook_01s_choice_read_from_the_record(build):
    with pytest.raises(RunError, match="no dataset recorded .* run notebook 01 first"):
        _ = Run.start("02_eda_class_imbalance").dataset
    first = Run.start("01_scrape_doitpoms", "smoke")
    first.begin_stage("data")
    first.substitute("data", "embedded sample", "site unreachable")
    first.record_stage("data", source="sample", dataset_dir="data/sample", complete=True)
    later = Run.start("02_eda_class_imbalance", "smoke")
    assert later.dataset.dir == config.repo_root() / "data" / "sample"
    assert (later.dataset.source, later.dataset.complete) == ("sample", True)
    assert later.data_labels == ["sample data"] and later.dataset.shown == "data/sample"
    assert "embedded sample" in later.banner(["data"])
    assert later.destination.reasons == (
        "not run by `make reproduce`",
        "smoke profile",
        "embedded sample data",
    )


def _data_from(source: str) -> None:
    first = Run.start("01_scrape_doitpoms", "full")
    first.begin_stage("data")
    first.record_stage("data", source=source, dataset_dir="data/sample", complete=True)


def test_on_the_embedded_sample_the_full_profile_runs_its_sample_sizes_unless_a_user_set_them(
    build,
):
    full = config.profile("full")
    _data_from("scraped")
    assert Run.start("03_clip_zero_shot", "full").profile == full  # the library: as it is
    _data_from("sample")
    run = Run.start("04_vlm_qa", "full", cv_seeds=7)
    assert run.profile.vlm_agreement_n == full.on_sample["vlm_agreement_n"] < full.vlm_agreement_n
    assert run.profile.robustness_sample_size == full.on_sample["robustness_sample_size"]
    assert run.profile.cv_seeds == 7  # the user's parameter wins over the sample's size
    assert Run.start("03_clip_zero_shot", "full", cv_seeds=10).profile.cv_seeds == 10  # even
    # when it is the full profile's own value
    assert run.overrides == {"cv_seeds": 7} and run.variant  # only the user's name a variant
    assert Run.start("04_vlm_qa", "full").variant == ""
    section = run.record_stage("vlm")
    assert section["profile_settings"]["vlm_agreement_n"] == full.on_sample["vlm_agreement_n"]
    assert Run.start("04_vlm_qa", "smoke").profile == config.profile("smoke")  # already small
    with pytest.raises(RunError, match="unknown profile setting 'on_sample'"):
        Run.start("04_vlm_qa", "full", on_sample="{}")
    for profile in config.PROFILES.values():  # the banner names every size a profile changes
        assert set(profile.on_sample) <= set(config.SAMPLE_SIZE_NAMES)
    note = full.sample_note()
    assert "3 CV fold seeds per probe" in note and "20 images asked in both VLM modes" in note


def test_a_stage_record_holds_the_resolved_profile_and_its_overrides(build):
    run = Run.start("05_comparison", "full", n_boot=200, seed=3)
    section = run.record_stage("comparison", methods=[])
    assert section["profile"] == "full"
    assert section["profile_settings"]["n_boot"] == 200
    assert section["profile_settings"]["seed"] == 3
    assert section["overrides"] == {"n_boot": 200, "seed": 3}
    assert provenance.Record.load().section("comparison")["overrides"] == {"n_boot": 200, "seed": 3}


def test_prompt_sets_are_a_setting_recorded_by_content():
    mine = {"plain": {"category": {c: [f"a {c.lower()}"] for c in taxonomy.TASKS["category"][1]}}}
    assert list(prompts.prompt_sets("category", mine)) == ["plain"]
    assert prompts.prompt_sets("technique", mine) == {}  # a set without the task is not scored
    record = prompts.prompts_record(mine)
    assert record["sets"]["category"]["plain"]["Ceramic"] == ["a ceramic"]
    assert record["sha256"] != prompts.prompts_record(None)["sha256"]
    assert prompts.prompts_record(None)["source"] == "microqa.clip.prompts"
    with pytest.raises(ValueError, match="no prompts for"):
        prompts.prompt_sets("category", {"bad": {"category": {"Ceramic": ["x"]}}})


def test_only_provenance_and_run_read_the_record_and_nothing_keeps_run_state():
    readers, state = [], []
    for path in sorted((REPO / "lib" / "microqa").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO / "lib" / "microqa").as_posix()
        if name not in ("provenance.py", "run.py") and re.search(
            r"provenance\.load\(|Record\.load\(|provenance\.json", text
        ):
            readers.append(name)
        if re.search(r"^_(chosen_profile|run|pending)\b.*=", text, flags=re.MULTILINE):
            state.append(name)
    assert readers == [] and state == []
