"""config.py: profiles, their overrides (papermill parameters), environment overrides."""

from __future__ import annotations

import pytest

from microqa import config


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("MICROQA_PROFILE", raising=False)


def test_profile_defaults_to_full_and_follows_the_environment(monkeypatch):
    assert config.profile().name == "full"
    monkeypatch.setenv("MICROQA_PROFILE", "smoke")
    assert config.profile().name == "smoke"
    assert config.profile("full").name == "full"  # a name wins, and is not remembered
    assert config.profile().name == "smoke"


def test_an_unknown_profile_is_named():
    with pytest.raises(ValueError, match="'tiny'.*full"):
        config.profile("tiny")


def test_overrides_accept_json_strings_as_papermill_passes_them():
    full = config.profile("full")
    two = full.with_overrides(clip_models='["ViT-B-32:openai","RN50:openai"]')
    assert two.clip_models == ("ViT-B-32:openai", "RN50:openai")
    assert full.with_overrides(clip_models=["RN50:openai"]).clip_models == ("RN50:openai",)
    assert full.with_overrides(clip_models="RN50:openai").clip_models == ("RN50:openai",)
    sets = '{"mine": {"category": {"Metal or alloy": ["a metal"]}}}'
    assert full.with_overrides(clip_prompt_sets=sets).clip_prompt_sets == {
        "mine": {"category": {"Metal or alloy": ["a metal"]}}
    }
    assert full.with_overrides(n_boot=None, seed=None) == full  # None: the profile's own
    assert full.with_overrides(n_boot=50).overrides_from(full) == {"n_boot": 50}


def test_bad_overrides_are_one_line_errors():
    full = config.profile("full")
    with pytest.raises(ValueError, match="unknown profile setting 'modles'"):
        full.with_overrides(modles=["x"])
    with pytest.raises(ValueError, match="clip_models: not valid JSON"):
        full.with_overrides(clip_models='["ViT-B-32:openai",')
    with pytest.raises(ValueError, match="list of strings"):
        full.with_overrides(clip_models="[1, 2]")


def test_the_profiles_state_each_setting_once():
    full, smoke = config.profile("full"), config.profile("smoke")
    assert (full.n_boot, full.vlm_sample_size, full.vlm_agreement_n) == (1000, "all", 60)
    assert (smoke.n_boot, smoke.vlm_sample_size, smoke.vlm_agreement_n) == (100, 12, 6)
    assert full.vlm_models == smoke.vlm_models == config.VLM_MODELS


def test_the_notebook_list_is_the_notebooks_folder():
    assert config.notebooks() == (
        "01_scrape_doitpoms",
        "02_eda_class_imbalance",
        "03_clip_zero_shot",
        "04_vlm_qa",
        "05_comparison",
    )


def test_paths_follow_their_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "b"))
    assert config.scraped_dir() == tmp_path / "d" / "doitpoms"
    assert config.build_dir() == tmp_path / "b"


def test_stand_in_models_live_in_the_users_cache_not_the_working_tree(monkeypatch, tmp_path):
    monkeypatch.delenv("MICROQA_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert config.models_dir() == tmp_path / "cache" / "microqa" / "models"
    assert not config.models_dir().is_relative_to(config.repo_root())
    monkeypatch.setenv("MICROQA_MODELS", str(tmp_path / "mine"))
    assert config.models_dir() == tmp_path / "mine"


def test_vlm_questions_come_as_a_json_mapping_and_are_recorded_by_content():
    full = config.profile("full")
    wording = '{"category": {"question": "Which material is this?"}}'
    reworded = full.with_overrides(vlm_questions=wording)
    assert reworded.vlm_questions == {"category": {"question": "Which material is this?"}}
    assert reworded.as_record()["vlm_questions"] == reworded.vlm_questions
    assert reworded.overrides_from(full) == {"vlm_questions": reworded.vlm_questions}
    with pytest.raises(ValueError, match="vlm_questions must be a mapping"):
        full.with_overrides(vlm_questions='["a question"]')
