"""config.py: profiles, environment overrides."""

from __future__ import annotations

import pytest

from microqa import config


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(config, "_chosen_profile", None)
    monkeypatch.delenv("MICROQA_PROFILE", raising=False)


def test_profile_defaults_to_full_and_follows_the_environment(monkeypatch):
    assert config.profile().name == "full"
    monkeypatch.setenv("MICROQA_PROFILE", "smoke")
    assert config.profile().name == "smoke"


def test_a_profile_chosen_by_name_is_the_runs_profile(monkeypatch):
    monkeypatch.setenv("MICROQA_PROFILE", "full")
    assert config.profile("smoke").name == "smoke"
    assert config.profile().name == "smoke"


def test_an_unknown_profile_is_named():
    with pytest.raises(ValueError, match="'tiny'.*full"):
        config.profile("tiny")


def test_paths_follow_their_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "b"))
    assert config.scraped_dir() == tmp_path / "d" / "doitpoms"
    assert config.build_dir() == tmp_path / "b"
