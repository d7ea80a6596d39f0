"""sample.py: the embedded offline sample (coverage, limits, licence) and its builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from microqa import cli
from microqa.data import dataset, images, taxonomy
from microqa.data import sample as builder
from tests.conftest import MIRROR, REPO, needs_mirror
from tests.test_dataset import magic_format

SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def sample():
    return dataset.load_records(SAMPLE)


@pytest.fixture(scope="module")
def mirror():
    return dataset.load_records(MIRROR)


def test_sample_covers_every_family_and_category(sample):
    families = sample["technique_family"].value_counts()
    assert set(families.index) == set(taxonomy.ALL_FAMILIES)
    assert families.min() >= 2
    assert set(sample["primary_category"].dropna()) == set(taxonomy.PRIMARY_CATEGORIES)
    assert sample["category_set"].map(len).max() >= 3  # multi-label combinations are there
    assert sample["specimen_group"].nunique() >= 0.9 * len(sample)  # mostly distinct specimens


@needs_mirror()
def test_sample_covers_every_combination_and_technique_string_of_the_mirror(sample, mirror):
    assert set(sample["category_set"]) == set(mirror["category_set"])
    assert set(sample["technique"].map(taxonomy.normalise)) == set(
        mirror["technique"].map(taxonomy.normalise)
    )


def test_sample_size_format_and_dimension_limits(sample):
    assert 50 <= len(sample) <= 70
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total <= builder.SAMPLE_MAX_BYTES
    assert sorted((SAMPLE / "images").iterdir()) == sorted(map(Path, sample["image_path"]))
    for _, row in sample.iterrows():
        assert max(row["image_width"], row["image_height"]) <= builder.SAMPLE_MAX_SIDE
        assert Path(row["image_path"]).suffix == "." + images.FORMAT_EXTENSIONS[row["image_format"]]
        assert magic_format(row["image_path"]) == row["image_format"]
    kinds = set(zip(sample["image_format"], sample["image_mode"], strict=True))
    assert {("GIF", "L"), ("GIF", "P"), ("BMP", "RGB"), ("JPEG", "L"), ("JPEG", "RGB")} <= kinds


def test_sample_licence_names_every_contributor(sample):
    licence = (SAMPLE / "LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY-NC-SA" in licence and "University of Cambridge" in licence
    for _, row in sample.iterrows():
        assert f"| {row['micrograph_no']} |" in licence
        assert " ".join(row["contributor"].split()) in licence


def test_sample_builder_is_deterministic_and_keeps_format_and_mode(tmp_path):
    # The committed sample serves as the mirror; 200 px forces the resize path for every file.
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        builder.build_sample(SAMPLE, out, n=12, seed=3, max_side=200)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    built = dataset.load_records(outs[0])
    assert len(built) == 12
    assert set(built["technique_family"]) == set(taxonomy.ALL_FAMILIES)
    source = dataset.load_records(SAMPLE).set_index("micrograph_no")
    for _, row in built.iterrows():
        original = source.loc[row["micrograph_no"]]
        assert (row["image_format"], row["image_mode"]) == (
            original["image_format"],
            original["image_mode"],
        )
        assert max(row["image_width"], row["image_height"]) <= 200
    other_seed = builder.select_sample(dataset.load_records(SAMPLE), 12, seed=4)
    assert set(other_seed["micrograph_no"]) != set(built["micrograph_no"])


def test_sample_builder_failure_keeps_the_previous_sample(tmp_path):
    out = tmp_path / "sample"
    builder.build_sample(SAMPLE, out, n=6, max_side=64)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(dataset.DatasetError, match="over the"):
        builder.build_sample(SAMPLE, out, n=6, max_side=128, max_bytes=1000)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "sample.partial").exists()
    with pytest.raises(dataset.DatasetError, match="mirror itself"):
        builder.build_sample(SAMPLE, SAMPLE)


def test_sample_builder_never_replaces_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my work")
    with pytest.raises(dataset.DatasetError, match="not an embedded sample"):
        builder.build_sample(SAMPLE, out, n=6, max_side=64)
    assert (out / "notes.txt").read_text() == "my work"


def test_sample_cli_reports_a_bad_mirror(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["sample", "--mirror", str(tmp_path / "nowhere"), "--out", out]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "nowhere" in line
