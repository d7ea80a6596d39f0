"""Labels a microscopist would sign: every site string's family, the macroscopic-photograph
rule, archaeological slags, and the primary material class."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from microqa import dataset, taxonomy
from tests.conftest import MIRROR, SHARED, needs_mirror

R, T = taxonomy.OPTICAL_REFLECTED, taxonomy.OPTICAL_TRANSMITTED
# Each string of the site, as a microscopist reads it (stated here independently of the table).
SITE_STRINGS = {
    "Reflected light microscopy": R,
    "Optical microscope, reflected light": R,
    "Reflected light microscopy, polarised": R,
    "Reflected light microscopy, polarised with wave-plate": R,
    "Reflected light microscopy, cross-polarised, with Nomarski filter": R,
    "Optical microscopy, Nomarski differential interference contrast": R,
    "Optical microscope, interferential contrast": R,
    "Transmitted light microscopy": T,
    "Transmitted polarised light microscopy": T,
    "Transmitted polarised light microscopy, with sensitive tint plate": T,
    "Scanning electron microscopy (SEM)": taxonomy.SEM,
    "Scanning electron microscopy (SEM) in secondary electron imaging (SEI) mode": taxonomy.SEM,
    "Scanning electron microscopy (SEM) in backscattered electron imaging (BEI) mode": "SEM",
    "Field emission gun scanning electron microscopy (FEGSEM)": taxonomy.SEM,
    "Field emission gun scanning electron microscopy (FEGSEM) in secondary electron imaging "
    "(SEI) mode": taxonomy.SEM,
    "Focused ion beam (FIB) secondary electron image": taxonomy.SEM,
    "Transmission electron microscopy (TEM)": taxonomy.TEM,
    "Bright-field TEM": taxonomy.TEM,
    "High resolution electron microscopy (HREM)": taxonomy.TEM,
    "Transmission electron microscopy (TEM) of carbon replica": taxonomy.TEM,
    "Atomic force microscopy (AFM)": taxonomy.AFM,
    "Photography (no microscope)": taxonomy.OTHER,
    "X-ray tomography": taxonomy.OTHER,
}


@pytest.mark.parametrize("technique, family", sorted(SITE_STRINGS.items()))
def test_every_site_string_has_the_family_a_microscopist_gives_it(technique, family):
    assert taxonomy.technique_family(technique) == family


def test_the_table_holds_no_string_left_unreviewed():
    reviewed = {taxonomy.normalise(t) for t in SITE_STRINGS}
    assert set(taxonomy.TECHNIQUE_TABLE) - {taxonomy.CROSS_POLARISED_AMBIGUOUS} == reviewed


@pytest.mark.parametrize(
    "bar, expected", [("14 mm", 14.0), ("1.4 mm", 1.4), ("3 cm", 30.0), ("40 μm", None), ("", None)]
)
def test_scale_bar_in_millimetres(bar, expected):
    assert taxonomy.scale_bar_mm(bar) == expected


@pytest.mark.parametrize(
    "family, bar, text, macro",
    [
        (T, "14 mm", "Birefringence in a film of polyethylene", True),
        (T, "5 mm", "a bar", True),  # the threshold is inclusive
        (T, "4.9 mm", "a bar", False),
        (R, "1 mm", "Magnesia-chrome refractory brick", False),  # low magnification, a microscope
        (T, "1.4 mm", "Injection-moulded polypropylene (PP) hinge", True),
        (R, "1 mm", "Macrograph of a resistance spot weld", True),
        (taxonomy.SEM, "3 mm", "porous scaffold", False),  # an SEM at low magnification
        (R, "40 μm", "Al 75, Cu 25", False),
    ],
)
def test_macroscopic_photograph_rule(family, bar, text, macro):
    assert taxonomy.macroscopic_photograph(family, bar, text) is macro
    expected = taxonomy.OTHER if macro else family
    frame = pd.DataFrame(
        {"technique_family": [family], "length_bar": [bar], "brief_description": [text]}
    )
    assert taxonomy.with_photograph_rule(frame) == [expected]


def test_photograph_rule_keeps_tables_without_scale_bars():
    frame = pd.DataFrame({"technique_family": [T, None]}, dtype=object)
    assert taxonomy.with_photograph_rule(frame) == [T, None]


def test_archaeological_slag():
    assert taxonomy.archaeological_slag("Joldelund, Germany. Iron slag")
    assert taxonomy.archaeological_slag("Timna, wadi Arabah", "copper, SLAG, smelting")
    assert not taxonomy.archaeological_slag("Edo time japanese sword", "steel")


@pytest.mark.parametrize(
    "categories, primary",
    [
        (["Metal or alloy", "Composite"], taxonomy.COMPOSITE),
        (["Fracture", "Metal or alloy"], taxonomy.METAL),
        (["Oxide"], taxonomy.CERAMIC),
        (["Ceramic", "Polymer"], taxonomy.CERAMIC),
        (["Polymer", "Foam"], taxonomy.POLYMER),
        (["Device"], None),
    ],
)
def test_primary_category(categories, primary):
    assert taxonomy.primary_category(categories) == primary


@needs_mirror()
def test_mirror_families_after_relabelling_the_photographs():
    df = dataset.load_records(SHARED / "doitpoms")
    moved = df[
        (df["technique_family"] == taxonomy.OTHER) & ~df["technique"].str.contains("Photo|X-ray")
    ]
    assert sorted(moved["micrograph_no"]) == [
        *range(568, 579),
        597,
        598,
        599,
        615,
        625,
        656,
        842,
    ]
    assert df["technique_family"].isin(taxonomy.TECHNIQUE_FAMILIES).sum() == 839
    slags = df[taxonomy.slag_records(df)]
    assert len(slags) == 44 and set(slags["primary_category"]) == {taxonomy.METAL}


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
