"""The Makefile's dependency graph: an unchanged tree executes no notebook, and touching a
module re-executes exactly the notebooks that import it (checked with `make -n`, no runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import NOTEBOOKS, REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


@pytest.fixture
def tree(tmp_path):
    """A copy of the Makefile's inputs with every notebook already executed, newest last."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    for folder in ("lib", "notebooks", "tools"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=ignore)
    checksum = subprocess.run(
        "cksum < pyproject.toml | cut -d' ' -f1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(shutil.which("python3"))
    (tmp_path / "build" / "notebooks").mkdir(parents=True)
    (tmp_path / "build" / "data-source.txt").write_text("url= strict= dataset=\n")
    (tmp_path / ".venv" / f".setup-{checksum}").touch()
    # Everything dates from an hour ago, the executed notebooks from after it, in order; a
    # file touched or written now is then newer than all of them.
    past = time.time() - 3600
    for path in tmp_path.rglob("*"):
        if not path.is_symlink():
            touch(path, past)
    touch(tmp_path / ".venv" / f".setup-{checksum}", past + 10)
    for i, name in enumerate(NOTEBOOKS):
        executed = tmp_path / "build" / "notebooks" / f"{name}.ipynb"
        executed.touch()
        touch(executed, past + 100 + i)
    return tmp_path


def would_execute(tree, *variables: str) -> list[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DOITPOMS_URL", "STRICT", "MAKEFLAGS", "DATASET")
    }
    out = subprocess.run(
        ["make", "-n", "reproduce", *variables],
        cwd=tree,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    papermill = [line for line in out.splitlines() if "papermill" in line]
    return [name for name in NOTEBOOKS if any(f"notebooks/{name}.ipynb " in c for c in papermill)]


def touch(path, when):
    os.utime(path, (when, when))


def test_an_unchanged_tree_executes_nothing(tree):
    assert would_execute(tree) == []


def test_touching_a_module_reruns_exactly_its_importers(tree):
    touch(tree / "lib/microqa/vlm/hf.py", time.time())
    assert would_execute(tree) == ["04_vlm_qa", "05_comparison"]


def test_touching_an_upstream_notebook_reruns_its_readers(tree):
    touch(tree / "notebooks/03_clip_zero_shot.ipynb", time.time())
    assert would_execute(tree) == ["03_clip_zero_shot", "04_vlm_qa", "05_comparison"]
    touch(tree / "notebooks/03_clip_zero_shot.ipynb", 0)
    touch(tree / "notebooks/02_eda_class_imbalance.ipynb", time.time())
    assert would_execute(tree) == ["02_eda_class_imbalance"]


def test_changing_the_data_source_reruns_everything(tree):
    env = {**os.environ, "DOITPOMS_URL": "http://127.0.0.1:8765/miclib/"}
    out = subprocess.run(
        ["make", "-n", "reproduce"], cwd=tree, capture_output=True, text=True, env=env, check=True
    ).stdout
    assert all(f"notebooks/{name}.ipynb " in out for name in NOTEBOOKS)


def test_a_new_dataset_reruns_notebook_01_and_passes_it_as_a_parameter(tree):
    out = subprocess.run(
        ["make", "-n", "reproduce", "DATASET=../mine"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MAKEFLAGS"},
        check=True,
    ).stdout
    mine = (tree / ".." / "mine").resolve()
    assert f"-p dataset_dir '{mine}'" in out, out
    assert would_execute(tree, "DATASET=../mine") == NOTEBOOKS  # 01, and all that read it


def test_the_dependency_generator_runs_with_the_system_python():
    python = shutil.which("python3")
    out = subprocess.run(
        [python, "-S", str(REPO / "tools" / "notebook_deps.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    rules = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(rules) == {f"build/notebooks/{p.name}" for p in (REPO / "notebooks").glob("*.ipynb")}
    for deps in rules.values():
        assert "lib/microqa/config.py" in deps.split()
    assert (
        "lib/microqa/data/sources.py" in rules["build/notebooks/01_scrape_doitpoms.ipynb"].split()
    )
