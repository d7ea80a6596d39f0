"""taxonomy.py: technique strings -> families, primary category, multi-valued fields."""

from __future__ import annotations

import csv

import pytest

from microqa import taxonomy
from tests.conftest import MIRROR, needs_mirror


@needs_mirror()
def test_every_mirror_technique_maps_to_a_family():
    with open(MIRROR / "records.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["technique"].strip()]
    strings = {r["technique"] for r in rows}
    assert len(strings) == 24
    for row in rows:
        categories = taxonomy.split_multi(row["categories"])
        family = taxonomy.technique_family(row["technique"], categories)
        assert family in taxonomy.ALL_FAMILIES, row["technique"]


def test_cross_polarised_is_decided_by_material():
    assert taxonomy.technique_family("Cross-polarised light microscopy", ["Metal or alloy"]) == (
        taxonomy.OPTICAL_REFLECTED
    )
    assert taxonomy.technique_family("Cross-polarised  light\xa0microscopy", ["Polymer"]) == (
        taxonomy.OPTICAL_TRANSMITTED
    )


@pytest.mark.parametrize(
    "text,family",
    [
        ("Scanning Electron Microscopy, backscattered", taxonomy.SEM),
        ("HRTEM lattice image", taxonomy.TEM),
        ("AFM tapping mode", taxonomy.AFM),
        ("Transmitted light, thin section", taxonomy.OPTICAL_TRANSMITTED),
        ("Optical micrograph, DIC", taxonomy.OPTICAL_REFLECTED),
    ],
)
def test_unseen_variants_follow_rules(text, family):
    assert taxonomy.technique_family(text) == family


def test_unmappable_technique_raises_naming_it():
    with pytest.raises(taxonomy.UnmappedLabelError, match="Raman spectroscopy"):
        taxonomy.technique_family("Raman spectroscopy")
    assert taxonomy.technique_family("  ") is None


def test_primary_category_rule():
    assert taxonomy.primary_category(["Fracture", "Metal or alloy"]) == taxonomy.METAL
    assert taxonomy.primary_category(["Ceramic", "Composite"]) == taxonomy.COMPOSITE
    assert (
        taxonomy.primary_category(["Foam", "Metal or alloy", "Metal or alloy composite foam"])
        == taxonomy.METAL
    )
    assert taxonomy.primary_category(["Ceramic", "Polymer"]) == taxonomy.CERAMIC
    assert taxonomy.primary_category(["Oxide"]) == taxonomy.CERAMIC
    assert taxonomy.primary_category(["Device"]) is None
    assert taxonomy.split_multi("Fracture,\xa0 Metal or alloy , Fracture") == [
        "Fracture",
        "Metal or alloy",
    ]
