"""Shared CLIP test fixture: one seeded random ViT-B/32 weights file per test session (600 MB),
hard-linked wherever a test needs it under its own data directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARCH = "ViT-B-32-quickgelu"


@pytest.fixture(scope="session")
def random_b32_file(tmp_path_factory) -> Path:
    from microqa import clip

    root = tmp_path_factory.mktemp("random_b32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROQA_DATA", str(root / "data"))
        return clip.random_weights_file(ARCH, seed=0)


def place_random_b32(source: Path, data_dir: Path) -> Path:
    """Put the session's random weights where `clip.random_weights_file` looks under data_dir
    (as a second run of the study would find them), without copying 600 MB."""
    target = data_dir / "models" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)
    return target
