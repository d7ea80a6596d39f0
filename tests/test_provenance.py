"""provenance.py: substitutes recorded and refused under STRICT; a stage's record replaced only
when the stage finishes; the profile that ran; dataset paths relative to the repository."""

from __future__ import annotations

import json

import pytest

from microqa import config, provenance


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    monkeypatch.delenv("STRICT", raising=False)
    monkeypatch.delenv("MICROQA_PROFILE", raising=False)
    monkeypatch.setattr(provenance, "_pending", {})
    monkeypatch.setattr(config, "_chosen_profile", None)
    return tmp_path


def test_substitutes_are_recorded_and_refused_under_strict(build, monkeypatch):
    provenance.record_stage("clip", models=["ViT-B-32:openai"])
    provenance.substitute("clip", "random weights for ViT-B-32", "no network")
    record = json.loads((build / "provenance.json").read_text())
    assert record["clip"]["fallbacks"][0]["what"] == "random weights for ViT-B-32"
    assert "OFFLINE SUBSTITUTES" in provenance.banner()
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="random weights"):
        provenance.substitute("clip", "random weights", "no network")


def test_a_failed_run_leaves_the_previous_record_whole(build):
    provenance.begin_stage("vlm")
    provenance.substitute("vlm", "tiny random Qwen2-VL", "no weights")
    provenance.record_stage("vlm", models=["Qwen/Qwen2-VL-2B-Instruct"], profile="smoke")
    before = (build / "provenance.json").read_text()

    provenance.begin_stage("vlm")  # a new run starts ...
    provenance.substitute("vlm", "tiny random LLaVA", "no weights")
    # ... the banner of the running stage shows its own substitutes ...
    assert "tiny random LLaVA" in provenance.banner(["vlm"])
    assert "tiny random Qwen2-VL" not in provenance.banner(["vlm"])
    # ... and it fails before record_stage: nothing on disk changed.
    assert (build / "provenance.json").read_text() == before


def test_a_finished_run_replaces_the_record_with_its_own_substitutes(build):
    provenance.begin_stage("vlm")
    provenance.substitute("vlm", "old stand-in", "offline")
    provenance.record_stage("vlm", n=3)
    provenance.begin_stage("vlm")
    provenance.record_stage("vlm", n=5)
    section = provenance.load()["vlm"]
    assert section["n"] == 5 and section["fallbacks"] == []


def test_the_profile_recorded_is_the_one_that_ran(build, monkeypatch):
    monkeypatch.setenv("MICROQA_PROFILE", "full")
    assert provenance.record_stage("a", profile="smoke")["profile"] == "smoke"
    assert provenance.record_stage("b", profile=config.profile("smoke"))["profile"] == "smoke"
    # A notebook run with `-p profile smoke` chose its profile by name: that one is recorded.
    assert provenance.record_stage("c")["profile"] == "smoke"


def test_paths_inside_the_repository_are_recorded_relative_to_it(tmp_path):
    inside = config.repo_root() / "data" / "doitpoms"
    assert config.display_path(inside) == "data/doitpoms"
    assert config.repo_path("data/doitpoms") == inside
    assert config.display_path(tmp_path) == str(tmp_path)
    assert config.repo_path(tmp_path) == tmp_path


def test_the_banner_says_each_substitute_in_one_sentence_and_keeps_the_full_reason(build):
    raw = (
        "pretrained weights 'openai' cannot be downloaded or found in the cache (RuntimeError: "
        "Failed to download weights for tag 'openai': Failed to download file (open_clip_model"
    )
    provenance.substitute("clip", "ViT-B-32:openai -> same architecture ViT-B-32", raw)
    provenance.substitute("clip", "ViT-B-32:openai -> same architecture ViT-B-32", raw)
    provenance.substitute("vlm", "tiny model", "x" * 50 + " " + "y" * 200)
    text = provenance.banner()
    assert (
        "- **clip**: ViT-B-32:openai → same architecture ViT-B-32, because pretrained weights "
        "'openai' cannot be downloaded or found in the cache.\n" in text
    )
    assert "RuntimeError" not in text and text.count("**clip**") == 1
    assert "- **vlm**: tiny model, because " + "x" * 50 + " ….\n" in text  # cut between words
    assert provenance.load()["clip"]["fallbacks"][0]["reason"] == raw  # full reason kept
