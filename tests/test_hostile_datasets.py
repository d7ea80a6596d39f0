"""Hostile datasets (tests/hostile_data.py): one-line errors naming the file, row and fix for
unusable records; every bad image, missing image and orphan named once; every good image read;
and `embed` / `vlm` run over a user's folder leave it byte-identical (exit 1: some items failed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microqa.data import dataset, images, sources
from microqa.run import Run
from tests import hostile_data
from tests.clip_fixtures import place_random_b32, random_b32_file  # noqa: F401
from tests.conftest import REPO
from tests.openai_stub import OpenAIStub
from tests.scraper_helpers import snapshot as checksums


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_MAX_PIXELS", str(hostile_data.HUGE_LIMIT))
    return hostile_data.build_hostile(tmp_path / "user data")


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    "builder,pattern",
    [
        (
            hostile_data.duplicate_ids,
            r"records\.csv, rows 2, 4: micrograph_no 1 is used more than once; each record "
            r"needs its own id",
        ),
        (
            hostile_data.missing_columns,
            r"records\.csv: missing required column\(s\) technique; required are micrograph_no, "
            r"technique, categories \(every other column is optional\)",
        ),
        (
            hostile_data.latin1,
            r"records\.csv, line 3: byte 0xb5 is not UTF-8 .*save the file as UTF-8",
        ),
    ],
)
def test_unusable_records_give_one_line_naming_file_row_and_fix(tmp_path, builder, pattern):
    folder = builder(tmp_path / "d")
    before = checksums(folder)
    with pytest.raises(dataset.DatasetError, match=pattern) as caught:
        dataset.load_records(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder / "records.csv") in message
    assert checksums(folder) == before


def test_only_the_required_columns_are_required(tmp_path):
    df = dataset.load_records(hostile_data.only_required_columns(tmp_path / "d"))
    assert len(df) == 3
    assert (df["keywords"] == "").all() and (df["brief_description"] == "").all()
    assert set(dataset.RECORD_COLUMNS) <= set(df.columns)


def test_missing_images_orphans_and_labels_are_listed_not_dropped_silently(hostile, caplog):
    df = dataset.load_records(hostile.root, with_images_only=False)
    assert df.attrs["missing_images"] == hostile.missing
    assert df.attrs["orphan_images"] == hostile.orphans
    assert df.attrs["without_technique"] == hostile.without_technique
    assert sorted(df["micrograph_no"]) == hostile.records  # nothing dropped from the table
    usable = dataset.load_records(hostile.root)
    assert sorted(usable["micrograph_no"]) == sorted([*hostile.good, *hostile.bad])
    assert usable.attrs["missing_images"] == hostile.missing  # listed with the rows left out
    # an empty technique costs the technique label only
    blank = usable.set_index("micrograph_no").loc[hostile.without_technique[0]]
    assert pd.isna(blank["technique_family"]) and blank["primary_category"] == "Ceramic"
    # each concerned item is named once in the log (a CLI shows it on stderr)
    lines = [record.getMessage() for record in caplog.records]
    for token in [f"record {n} " for n in hostile.missing] + hostile.orphans:
        assert sum(token in line for line in lines) == 2, token  # two loads above, once each


def test_every_bad_image_is_named_once_and_every_good_one_decodes(hostile):
    df = dataset.with_image_metadata(dataset.load_records(hostile.root))
    failed = df[df["image_error"] != ""]
    assert sorted(failed["micrograph_no"]) == sorted(hostile.bad)
    for _, row in failed.iterrows():
        assert "\n" not in row["image_error"]
        with pytest.raises(images.ImageError) as caught:
            images.open_rgb(row["image_path"])
        assert Path(row["image_path"]).name in str(caught.value)
    for number, relative in hostile.good.items():
        rgb = images.open_rgb(hostile.root / relative)
        assert rgb.mode == "RGB", number
    huge = df.set_index("micrograph_no").loc[15, "image_error"]
    assert "over the limit of 2,000,000 pixels" in huge and "MICROQA_MAX_PIXELS" in huge


def test_16_bit_images_are_stretched_not_clipped(hostile):
    for suffix in (".png", ".tif"):
        [relative] = [r for n, r in hostile.good.items() if n in (2, 3) and r.endswith(suffix)]
        pixels = np.asarray(images.open_rgb(hostile.root / relative))
        assert pixels.min() == 0 and pixels.max() == 255
        assert (pixels == 255).mean() < 0.05  # clipping would make ~99% of it white


def test_exif_orientation_is_applied(hostile):
    rotated = hostile.root / hostile.good[6]
    assert images.open_rgb(rotated).size == (48, 64)


# ----------------------------------------------------------------------------- user datasets


def test_a_user_folder_is_validated_recorded_as_user_and_left_untouched(hostile, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(hostile.root.parent / "build"))
    before = checksums(hostile.root)
    choice = sources.resolve_dataset(Run.start("01", "smoke"), dataset_dir=hostile.root)
    assert choice.source == "user" and choice.dataset_dir == hostile.root
    assert choice.n_records == len(hostile.records)
    assert choice.n_images == len(hostile.good) + len(hostile.bad)
    notes = sources.notes_table(choice)
    assert sorted(notes["item"]) == sorted(
        [*map(str, hostile.missing), *hostile.orphans, *map(str, hostile.without_technique)]
    )
    assert checksums(hostile.root) == before


def test_an_unusable_user_folder_keeps_the_previous_record(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path / "build"))
    good = hostile_data.only_required_columns(tmp_path / "good")
    sources.resolve_dataset(Run.start("01", "smoke"), dataset_dir=good)
    record = (tmp_path / "build" / "provenance.json").read_bytes()
    with pytest.raises(dataset.DatasetError, match="used more than once"):
        sources.resolve_dataset(
            Run.start("01", "smoke"), dataset_dir=hostile_data.duplicate_ids(tmp_path / "dup")
        )
    assert (tmp_path / "build" / "provenance.json").read_bytes() == record


# ----------------------------------------------------------------------------- embed and vlm


def run_cli(hostile, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'lib'}:{REPO}",
        "MICROQA_BUILD": str(tmp_path / "build"),
        "MICROQA_DATA": str(tmp_path / "data"),
        "MICROQA_MODELS": str(tmp_path / "data" / "models"),
        "MICROQA_MAX_PIXELS": str(hostile_data.HUGE_LIMIT),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("STRICT", None)
    return subprocess.run(
        [sys.executable, "-m", "microqa", *args, "--dataset", str(hostile.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


def assert_bad_items_named_once(hostile, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    for number, relative in hostile.bad.items():
        named = [line for line in lines if line.startswith(f"failed: {number} ")]
        assert len(named) == 1, (number, stderr)
        assert relative in named[0], named
        assert sum(relative in line for line in lines) == 1, (relative, stderr)
    for number in hostile.missing:
        assert sum(f"record {number} " in line for line in lines) == 1, (number, stderr)
    for orphan in hostile.orphans:
        assert sum(orphan in line for line in lines) == 1, (orphan, stderr)


def failures_csv(tmp_path: Path) -> pd.DataFrame:
    [path] = [p for p in tmp_path.rglob("failures.csv") if "user data" not in str(p)]
    return pd.read_csv(path, dtype={"micrograph_no": int})


def test_embed_skips_bad_images_names_them_once_and_leaves_the_folder_untouched(
    hostile,
    tmp_path,
    random_b32_file,  # noqa: F811 (pytest fixture)
):
    place_random_b32(random_b32_file, tmp_path / "data")
    before = checksums(hostile.root)
    out = tmp_path / "embeddings.npz"
    done = run_cli(
        hostile,
        tmp_path,
        "embed",
        "--model",
        "ViT-B-32:openai",
        "--batch-size",
        "4",
        "--out",
        str(out),
    )
    assert done.returncode == 1, done.stderr
    assert_bad_items_named_once(hostile, done.stderr)
    failures = failures_csv(tmp_path)
    assert list(failures.columns) == ["micrograph_no", "image_file", "reason"]
    assert sorted(failures["micrograph_no"]) == sorted(hostile.bad)
    embedded = np.load(out)
    assert sorted(embedded["micrograph_no"]) == sorted(hostile.good)
    assert np.isfinite(embedded["embeddings"]).all()
    assert checksums(hostile.root) == before


def test_vlm_skips_bad_images_answers_the_rest_and_leaves_the_folder_untouched(hostile, tmp_path):
    before = checksums(hostile.root)
    with OpenAIStub() as stub:
        done = run_cli(
            hostile,
            tmp_path,
            "vlm",
            "--backend",
            "openai",
            "--model",
            "stub-vlm",
            "--base-url",
            stub.base_url,
            "--n",
            "all",
            "--tasks",
            "technique/study,category/study",
            "--no-describe",
            "--cache",
            str(tmp_path / "answers.sqlite"),
        )
    assert done.returncode == 1, done.stderr
    assert_bad_items_named_once(hostile, done.stderr)
    assert sorted(failures_csv(tmp_path)["micrograph_no"]) == sorted(hostile.bad)
    answers = pd.read_csv(tmp_path / "build" / "vlm" / "answers.csv")
    asked = answers.groupby("task")["micrograph_no"].agg(lambda s: sorted(set(s)))
    with_technique = sorted(set(hostile.good) - set(hostile.without_technique))
    assert asked["technique"] == with_technique
    assert asked["category"] == sorted(hostile.good)  # an empty technique costs only its task
    assert checksums(hostile.root) == before
