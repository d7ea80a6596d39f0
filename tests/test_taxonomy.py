"""Labels a microscopist would sign: every site string's family, the macroscopic-photograph
rule, archaeological slags, and the primary material class."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from microqa.data import dataset, taxonomy
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
    "bar, expected",
    [
        ("14 mm", 14.0),
        ("1.4 mm", 1.4),
        ("3 cm", 30.0),
        ("40 μm", None),
        ("", None),
        ("14\xa0mm", 14.0),  # a non-breaking space before the unit, as web pages often have
        ("1,5 mm", 1.5),  # a decimal comma (record 842 writes its plates as "1,5mm")
        ("1.2.3 mm", None),  # not a number
    ],
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


def test_photograph_rule_row_by_row_on_mirror_records():
    # (micrograph_no, family of its technique string, length_bar, brief_description) as in the
    # 2025 mirror, and the family each record ends with
    rows = [
        (568, T, "8 mm", "Strain induced birefringence in a thermoformed PET cup", taxonomy.OTHER),
        (148, R, "1 mm", "Magnesia-chrome refractory brick", R),  # a microscope at low power
        (615, R, "10 mm", "Cross-section of an aluminium casting", taxonomy.OTHER),
        (842, R, "1 mm", "Macrograph of a resistance spot weld", taxonomy.OTHER),  # named so
        (582, taxonomy.SEM, "4 mm", "Low magnification SEM image of open cell foam", "SEM"),
        (999, None, "", "", None),  # a record without a technique stays without a family
    ]
    frame = pd.DataFrame(
        [r[:4] for r in rows],
        columns=["micrograph_no", "technique_family", "length_bar", "brief_description"],
        dtype=object,  # keeps None as None
    )
    assert taxonomy.with_photograph_rule(frame) == [r[4] for r in rows]


def test_archaeological_slag_is_named_in_the_description_or_the_keywords():
    assert taxonomy.archaeological_slag("Joldelund, Germany. Iron slag", "")
    assert taxonomy.archaeological_slag("Timna, wadi Arabah", "copper, SLAG, smelting")
    assert not taxonomy.archaeological_slag("Edo time japanese sword", "steel")
    records = pd.DataFrame(
        {
            "brief_description": ["Joldelund, Germany. Iron slag", "Edo sword", "Timna"],
            "keywords": ["", "steel", "copper, SLAG, smelting"],
        }
    )
    assert taxonomy.slag_records(records) == [True, False, True]
    # a table without one of the two columns reads it as empty
    assert taxonomy.slag_records(records[["brief_description"]]) == [True, False, False]
    assert taxonomy.slag_records(records[["keywords"]]) == [False, False, True]
    assert taxonomy.slag_records(records[[]]) == [False, False, False]


@pytest.mark.parametrize(
    "categories, primary",
    [
        (["Metal or alloy", "Composite"], taxonomy.COMPOSITE),
        (["Fracture", "Metal or alloy"], taxonomy.METAL),
        (["Oxide"], taxonomy.CERAMIC),
        (["Ceramic", "Polymer"], taxonomy.CERAMIC),
        (["Polymer", "Foam"], taxonomy.POLYMER),
        (["Device"], None),
        ([" Polymer ", ""], taxonomy.POLYMER),  # padding and blanks do not count
        # the mirror's metal foams (8 records): "composite foam" names a foam, not a composite
        (["Foam", "Metal or alloy", "Metal or alloy composite foam"], taxonomy.METAL),
        # its polymer composite foams (4 records) are also tagged Composite
        (["Composite", "Foam", "Polymer", "Polymer composite foam"], taxonomy.COMPOSITE),
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
        # light microscopy with no side named: reflected, the metallographic default; any one of
        # "polari", "light" or "optical" says it is light microscopy
        ("Polarised microscopy, crossed nicols", taxonomy.OPTICAL_REFLECTED),
        ("Bright field light microscopy", taxonomy.OPTICAL_REFLECTED),
        ("Optical microscopy", taxonomy.OPTICAL_REFLECTED),
    ],
)
def test_unseen_variants_follow_rules(text, family):
    assert taxonomy.technique_family(text) == family


def test_unmappable_technique_raises_naming_it():
    with pytest.raises(taxonomy.UnmappedLabelError, match="Raman spectroscopy"):
        taxonomy.technique_family("Raman spectroscopy")
    assert taxonomy.technique_family("  ") is None


@pytest.mark.parametrize(
    "technique, mode",
    [
        ("Scanning electron microscopy (SEM) in backscattered electron imaging (BEI) mode", "BEI"),
        ("Transmitted polarised light microscopy, with sensitive tint plate", "sensitive tint"),
        (" Bright-field\xa0TEM ", "bright field"),  # matched after `normalise`
        ("Atomic force microscopy (AFM)", "unspecified"),  # the site names no mode
        ("AFM tapping mode", "unspecified"),  # an unseen string: family by rule, mode unknown
    ],
)
def test_technique_mode(technique, mode):
    assert taxonomy.technique_mode(technique) == mode


def test_coarse_class_merges_the_two_optical_families():
    coarse = {family: taxonomy.coarse_class(family) for family in (*taxonomy.ALL_FAMILIES, None)}
    assert coarse == {
        taxonomy.SEM: "SEM",
        taxonomy.TEM: "TEM",
        taxonomy.AFM: "AFM",
        R: "Optical",
        T: "Optical",
        taxonomy.OTHER: None,  # not microscopy: outside the earlier study's four classes
        None: None,
    }
    assert set(coarse.values()) - {None} == set(taxonomy.COARSE_CLASSES)


@pytest.mark.parametrize(
    "value, parts",
    [
        ("Fracture, Metal or alloy", ["Fracture", "Metal or alloy"]),
        (" Metal  or\xa0alloy ,Foam", ["Metal or alloy", "Foam"]),  # white space folded
        ("Polymer, Polymer,, ", ["Polymer"]),  # repeats and empty parts dropped
        ("", []),
        (None, []),
        (float("nan"), []),  # an empty cell read by pandas
    ],
)
def test_split_multi(value, parts):
    assert taxonomy.split_multi(value) == parts
