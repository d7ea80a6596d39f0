"""provenance.py: substitutes recorded and refused under STRICT; a stage's record replaced only
when the stage finishes; the profile that ran; dataset paths relative to the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from microqa import config, provenance


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    monkeypatch.delenv("STRICT", raising=False)
    monkeypatch.delenv("MICROQA_PROFILE", raising=False)
    return tmp_path


def test_substitutes_are_recorded_and_refused_under_strict(build, monkeypatch):
    record = provenance.Record.load()
    record.record_stage("clip", models=["ViT-B-32:openai"])
    provenance.substitute("clip", "random weights for ViT-B-32", "no network", record)
    on_disk = json.loads((build / "provenance.json").read_text())
    assert on_disk["clip"]["fallbacks"][0]["what"] == "random weights for ViT-B-32"
    assert "OFFLINE SUBSTITUTES" in provenance.Record.load().banner()
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="random weights"):
        provenance.substitute("clip", "random weights", "no network", record)


def test_a_failed_run_leaves_the_previous_record_whole(build):
    record = provenance.Record.load()
    record.begin_stage("vlm")
    provenance.substitute("vlm", "tiny random Qwen2-VL", "no weights", record)
    record.record_stage("vlm", models=["Qwen/Qwen2-VL-2B-Instruct"], profile="smoke")
    before = (build / "provenance.json").read_text()

    rerun = provenance.Record.load()  # a new run starts ...
    rerun.begin_stage("vlm")
    provenance.substitute("vlm", "tiny random LLaVA", "no weights", rerun)
    # ... the banner of the running stage shows its own substitutes ...
    assert "tiny random LLaVA" in rerun.banner(["vlm"])
    assert "tiny random Qwen2-VL" not in rerun.banner(["vlm"])
    # ... and it fails before record_stage: nothing on disk changed.
    assert (build / "provenance.json").read_text() == before


def test_a_finished_run_replaces_the_record_with_its_own_substitutes(build):
    record = provenance.Record.load()
    record.begin_stage("vlm")
    provenance.substitute("vlm", "old stand-in", "offline", record)
    record.record_stage("vlm", n=3)
    record.begin_stage("vlm")
    record.record_stage("vlm", n=5)
    section = provenance.Record.load().section("vlm")
    assert section["n"] == 5 and section["fallbacks"] == []


def test_two_runs_of_one_process_keep_their_own_substitutes(build):
    """No module state: a stage begun in one run's record is not another run's."""
    first, second = provenance.Record.load(), provenance.Record.load()
    first.begin_stage("clip")
    provenance.substitute("clip", "random ViT-B-32", "offline", first)
    assert second.fallbacks("clip") == []
    second.record_stage("data", source="sample")
    first.record_stage("clip", models=["ViT-B-32:openai"])
    on_disk = provenance.Record.load()
    assert on_disk.section("data")["source"] == "sample"  # the other run's stage is kept
    assert on_disk.fallbacks("clip") == [
        {"stage": "clip", "what": "random ViT-B-32", "reason": "offline"}
    ]


def test_the_profile_recorded_is_the_one_that_ran(build, monkeypatch):
    monkeypatch.setenv("MICROQA_PROFILE", "full")
    record = provenance.Record.load()
    assert record.record_stage("a", profile="smoke")["profile"] == "smoke"
    assert record.record_stage("b", profile=config.profile("smoke"))["profile"] == "smoke"
    assert record.record_stage("c")["profile"] == "full"  # none given: the environment's


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
    record = provenance.Record.load()
    record.begin_stage("clip")
    provenance.substitute("clip", "ViT-B-32:openai -> same architecture ViT-B-32", raw, record)
    provenance.substitute("clip", "ViT-B-32:openai -> same architecture ViT-B-32", raw, record)
    record.record_stage("clip")
    record.begin_stage("vlm")
    provenance.substitute("vlm", "tiny model", "x" * 50 + " " + "y" * 200, record)
    record.record_stage("vlm")
    text = provenance.Record.load().banner()
    assert (
        "- **clip**: ViT-B-32:openai → same architecture ViT-B-32, because pretrained weights "
        "'openai' cannot be downloaded or found in the cache.\n" in text
    )
    assert "RuntimeError" not in text and text.count("**clip**") == 1
    assert "- **vlm**: tiny model, because " + "x" * 50 + " ….\n" in text  # cut between words
    assert provenance.Record.load().section("clip")["fallbacks"][0]["reason"] == raw  # kept whole


def test_a_short_reason_reads_on_after_because_and_keeps_a_names_case():
    assert provenance.short_reason("Pretrained VLM weights are not available offline.") == (
        "pretrained VLM weights are not available offline"
    )
    reason = "ViT-B-32:openai: pretrained weights 'openai' cannot be found (RuntimeError: x)"
    assert provenance.short_reason(reason).startswith("ViT-B-32:openai: pretrained")
    assert provenance.short_reason("CUDA is absent").startswith("CUDA")


@pytest.mark.integration  # runs git
def test_the_commit_is_dirty_when_code_changed_not_when_a_run_rewrote_its_outputs(
    tmp_path, monkeypatch
):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for path in ("lib/stage.py", "docs/index.html", "tables/t.md", "figures/f.png", "README.md"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("committed\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(config, "repo_root", lambda: tmp_path)
    for path in ("docs/index.html", "tables/t.md", "figures/f.png", "README.md"):
        (tmp_path / path).write_text("rewritten by a run\n")
    assert not provenance.git_sha().endswith("-dirty")
    (tmp_path / "lib/stage.py").write_text("changed code\n")
    assert provenance.git_sha().endswith("-dirty")


@pytest.mark.integration  # runs git, with a deliberately slow filter
def test_a_commit_stamp_never_writes_the_users_git_index(tmp_path, monkeypatch):
    # A status that refreshes the index takes its lock; cut off by the timeout it would leave
    # .git/index.lock behind, and every later status would be slow. A stamp only reads.
    import subprocess
    import time

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "nb.ipynb").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(config, "repo_root", lambda: tmp_path)
    index = tmp_path / ".git" / "index"
    later = time.time() + 60  # stat-dirty, same content: a plain status rewrites the index
    os.utime(tmp_path / "nb.ipynb", (later, later))
    before = index.stat().st_mtime_ns
    assert not provenance.git_sha().endswith("-dirty")
    assert index.stat().st_mtime_ns == before

    git("config", "filter.slow.clean", "sleep 3; cat")
    (tmp_path / ".gitattributes").write_text("*.ipynb filter=slow\n")
    git("add", ".gitattributes")  # the committed notebook now goes through a slow filter
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "slow")
    (tmp_path / "nb.ipynb").touch()
    monkeypatch.setattr(provenance, "GIT_TIMEOUT", 1)
    assert provenance.git_sha() == "unknown"  # a git slower than the timeout: said, not guessed


def test_notebooks_finishing_side_by_side_keep_each_others_stages(build, tmp_path):
    """`make reproduce` runs notebook 02 beside 03: two processes finishing stages at once
    must both find their sections in the record (a read-modify-write without the lock loses
    one process's stages)."""
    script = (
        "import sys\n"
        "from microqa import provenance\n"
        "for i in range(150):\n"
        "    provenance.Record.load().record_stage(f'{sys.argv[1]}{i}')\n"
    )
    env = {**os.environ, "MICROQA_ROOT": str(tmp_path)}  # no git here: no git call to wait on
    writers = [
        subprocess.Popen([sys.executable, "-c", script, name], env=env) for name in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    stages = set(provenance.Record.load().sections)
    assert stages == {f"{name}{i}" for name in "ab" for i in range(150)}
