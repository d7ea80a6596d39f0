"""Shared CLIP test fixtures: one seeded random ViT-B/32 weights file per test session (600 MB),
hard-linked wherever a test needs it under its own data directory; fresh stage folders with an
unreachable hub; small datasets copied from the embedded sample."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

ARCH = "ViT-B-32-quickgelu"
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def random_b32_file(tmp_path_factory) -> Path:
    from microqa import clip

    root = tmp_path_factory.mktemp("random_b32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROQA_DATA", str(root / "data"))
        mp.setenv("MICROQA_MODELS", str(root / "data" / "models"))
        return clip.random_weights_file(ARCH, seed=0)


def place_random_b32(source: Path, data_dir: Path) -> Path:
    """Put the session's random weights where `clip.random_weights_file` looks when
    MICROQA_MODELS is data_dir/models (as a second run of the study would find them), without
    copying 600 MB."""
    target = data_dir / "models" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)
    return target


@pytest.fixture
def stage_dirs(tmp_path, monkeypatch):
    """Fresh data/build dirs (cache, models, provenance) and a hub that cannot be reached."""
    from huggingface_hub import constants

    from microqa import hub

    monkeypatch.setenv("MICROQA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("MICROQA_MODELS", str(tmp_path / "data" / "models"))
    monkeypatch.delenv("STRICT", raising=False)
    monkeypatch.setattr(hub, "reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    return tmp_path


def small_dataset(folder: Path, n: int) -> pd.DataFrame:
    """The first n records of the embedded sample (records.csv + images/), copied to folder."""
    (folder / "images").mkdir(parents=True)
    records = pd.read_csv(SAMPLE / "records.csv", dtype=str, keep_default_na=False).head(n)
    columns = [c for c in records.columns if not c.startswith("image_")]
    records[columns].to_csv(folder / "records.csv", index=False)
    for number in records["micrograph_no"].astype(int):
        (source,) = (SAMPLE / "images").glob(f"{number:06d}.*")
        shutil.copy(source, folder / "images" / source.name)
    return records
