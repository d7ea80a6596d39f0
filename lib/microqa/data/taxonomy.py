"""Label taxonomy: free-text DoITPoMS techniques -> families, category sets -> a primary class.

The site's `technique` field is free text (24 distinct strings in the 2025 mirror). The
earlier study matched labels by exact string and silently dropped the variants; here every
string maps to a family through `TECHNIQUE_TABLE`, with rules for unseen variants, and an
unmappable string raises instead of disappearing.

Families (the 5-class task uses the first five; "Other" is not a microscopy technique):

| family | covers |
|---|---|
| SEM | SEM, SEI / BEI modes, FEGSEM, FIB secondary-electron images |
| TEM | TEM, bright-field TEM, HREM, carbon replicas |
| AFM | atomic force microscopy |
| Optical (reflected) | reflected light incl. polarised, cross-polarised, DIC, interference |
| Optical (transmitted) | transmitted light incl. polarised, sensitive tint; birefringent polymers |
| Other | photography without a microscope, X-ray tomography |

Ambiguous string, decided per record: plain "Cross-polarised light microscopy" (30 records).
The records show two populations: aluminium alloys etched with Barker's reagent (anodised
films viewed in *reflected* cross-polarised light; opaque metals cannot be seen in
transmission) and polymers / photoelastic models showing birefringence colours (thin films,
sections on glass slides, transparent mouldings: *transmitted* light). So the rule is:
reflected when the record is a metal or alloy, transmitted otherwise.

Macroscopic photographs filed as light microscopy (`macroscopic_photograph`): a record whose
technique is light microscopy but whose scale bar is 5 mm or more, or whose description names
a macroscopic object or view, is family *Other*, like the site's own photographs. A 5 mm bar
on a DoITPoMS image means a field of view of centimetres, beyond the lowest objective of a
metallurgical or polarising microscope; these are photographs of whole parts, e.g. between
crossed polarisers. Evidence in the 2025 mirror (18 records): injection-moulded rulers,
protractors, a case, a hinge and a sprue, a thermoformed PET cup, polycarbonate bars and
polymer films (568-578, bars 1.4-30 mm, J A Curran), photoelastic models (597-599, 6 mm), laser
welds in PET (625, 12 mm), an aluminium casting section and a commercial-purity Al macro-etch
(615, 656, 10 mm), and a spot-weld "macrograph" (842).

Archaeological slags (`archaeological_slag`: "slag" in the description or keywords) keep the
site's material category (Metal or alloy), but results are also reported without them: they
are one contributor's thin sections of smelting residues, mostly silicate and oxide phases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SEM, TEM, AFM = "SEM", "TEM", "AFM"
OPTICAL_REFLECTED, OPTICAL_TRANSMITTED, OTHER = (
    "Optical (reflected)",
    "Optical (transmitted)",
    "Other",
)
TECHNIQUE_FAMILIES = (SEM, TEM, AFM, OPTICAL_REFLECTED, OPTICAL_TRANSMITTED)
ALL_FAMILIES = (*TECHNIQUE_FAMILIES, OTHER)
# The earlier study's coarse 4-class view: both optical families merged.
OPTICAL = "Optical"
COARSE_CLASSES = (SEM, TEM, AFM, OPTICAL)
CROSS_POLARISED_AMBIGUOUS = "cross-polarised light microscopy"

# Every technique string in the mirror, normalised (see `normalise`) -> (family, mode).
TECHNIQUE_TABLE: dict[str, tuple[str, str]] = {
    "reflected light microscopy": (OPTICAL_REFLECTED, "bright field"),
    "optical microscope, reflected light": (OPTICAL_REFLECTED, "bright field"),
    "reflected light microscopy, polarised": (OPTICAL_REFLECTED, "polarised"),
    "reflected light microscopy, polarised with wave-plate": (OPTICAL_REFLECTED, "polarised"),
    "reflected light microscopy, cross-polarised, with nomarski filter": (
        OPTICAL_REFLECTED,
        "Nomarski DIC",
    ),
    "optical microscopy, nomarski differential interference contrast": (
        OPTICAL_REFLECTED,
        "Nomarski DIC",
    ),
    "optical microscope, interferential contrast": (OPTICAL_REFLECTED, "interference contrast"),
    "transmitted light microscopy": (OPTICAL_TRANSMITTED, "bright field"),
    "transmitted polarised light microscopy": (OPTICAL_TRANSMITTED, "polarised"),
    "transmitted polarised light microscopy, with sensitive tint plate": (
        OPTICAL_TRANSMITTED,
        "sensitive tint",
    ),
    "scanning electron microscopy (sem)": (SEM, "unspecified"),
    "scanning electron microscopy (sem) in secondary electron imaging (sei) mode": (SEM, "SEI"),
    "scanning electron microscopy (sem) in backscattered electron imaging (bei) mode": (SEM, "BEI"),
    "field emission gun scanning electron microscopy (fegsem)": (SEM, "FEGSEM"),
    "field emission gun scanning electron microscopy (fegsem) in secondary electron imaging (sei) mode": (  # noqa: E501
        SEM,
        "FEGSEM SEI",
    ),
    "focused ion beam (fib) secondary electron image": (SEM, "FIB SE"),
    "transmission electron microscopy (tem)": (TEM, "unspecified"),
    "bright-field tem": (TEM, "bright field"),
    "high resolution electron microscopy (hrem)": (TEM, "HREM"),
    "transmission electron microscopy (tem) of carbon replica": (TEM, "carbon replica"),
    "atomic force microscopy (afm)": (AFM, "unspecified"),
    "photography (no microscope)": (OTHER, "photography"),
    "x-ray tomography": (OTHER, "X-ray tomography"),
    # Resolved per record by `technique_family` (see the module docstring).
    CROSS_POLARISED_AMBIGUOUS: ("", "cross-polarised"),
}

# Rules for strings not in the table (a user's own collection): first match wins.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"\bafm\b|atomic force", AFM),
        (r"\bfib\b|focused ion beam", SEM),
        (r"\bsem\b|scanning electron|fegsem|secondary electron|backscatter", SEM),
        (r"\btem\b|\bhrem\b|\bhrtem\b|\bstem\b|transmission electron|electron diffraction", TEM),
        (r"transmitted|thin section|sensitive tint", OPTICAL_TRANSMITTED),
        (
            r"reflected|nomarski|differential interference|\bdic\b|interferential|metallograph",
            OPTICAL_REFLECTED,
        ),
        (r"photograph|tomograph|x-ray|macro", OTHER),
    )
)

MACRO_SCALE_MM = 5.0  # a scale bar this long means a field of view of centimetres
_MACRO_WORDS = re.compile(r"injection-moulded|\bruler\b|protractor|macrograph|\bsprue\b")
_LENGTH = re.compile(r"([\d.,]+)\s*(mm|cm|m)\b")
_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def scale_bar_mm(length_bar: str) -> float | None:
    """The scale bar in millimetres ('14 mm' -> 14.0, '3 cm' -> 30.0); None for µm/nm/none."""
    match = _LENGTH.search(str(length_bar))  # its white space includes non-breaking spaces
    if not match:
        return None
    try:
        return float(match.group(1).replace(",", ".")) * _TO_MM[match.group(2)]
    except ValueError:
        return None


def macroscopic_photograph(family: str | None, length_bar: str, brief_description: str) -> bool:
    """A light-microscopy record that is a photograph of a whole part (see module docstring)."""
    if family not in (OPTICAL_REFLECTED, OPTICAL_TRANSMITTED):
        return False
    bar = scale_bar_mm(length_bar)
    return (bar is not None and bar >= MACRO_SCALE_MM) or bool(
        _MACRO_WORDS.search(normalise(brief_description))
    )


def with_photograph_rule(records) -> list[str | None]:
    """The `technique_family` column of a tidy table with macroscopic photographs as Other
    (`dataset.read_records_csv` gives every table all record columns)."""
    rows = records[["technique_family", "length_bar", "brief_description"]].to_numpy().tolist()
    return [
        OTHER if macroscopic_photograph(family, bar, text) else family for family, bar, text in rows
    ]


def archaeological_slag(brief_description: str, keywords: str) -> bool:
    """An archaeometallurgical slag sample (reported as its own group, see module docstring)."""
    return "slag" in normalise(f"{brief_description} {keywords}")


def slag_records(records) -> list[bool]:
    """`archaeological_slag` of every record of a tidy table (a missing column reads as empty)."""
    rows = records.reindex(columns=["brief_description", "keywords"], fill_value="").to_numpy()
    return [archaeological_slag(text, words) for text, words in rows.tolist()]


METAL, CERAMIC, POLYMER, COMPOSITE = "Metal or alloy", "Ceramic", "Polymer", "Composite"
PRIMARY_CATEGORIES = (METAL, CERAMIC, POLYMER, COMPOSITE)


# The single-label tasks: name -> (column of the tidy DataFrame, classes in a fixed order).
# "category_multi" (a hit view over the full category sets) is scored separately.
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "technique": ("technique_family", TECHNIQUE_FAMILIES),
    "technique_coarse": ("technique_coarse", COARSE_CLASSES),
    "category": ("primary_category", PRIMARY_CATEGORIES),
}


def chance(task: str) -> float:
    """Balanced accuracy (and each class's recall) of a guess that ignores the image."""
    return 1 / len(TASKS[task][1])


class UnmappedLabelError(ValueError):
    """A label string that the taxonomy cannot place; never silently dropped."""


def normalise(text: str) -> str:
    """Lower case, runs of white space (non-breaking spaces included) folded to one space."""
    return re.sub(r"\s+", " ", str(text)).strip().lower()  # `\s` includes "\xa0"


def split_multi(value: str | float | None) -> list[str]:
    """Split a comma-separated field ('Fracture, Metal or alloy') into clean, ordered values."""
    if value is None or value != value:  # None, or NaN (the one value unequal to itself)
        return []
    seen: list[str] = []
    for part in str(value).split(","):
        part = re.sub(r"\s+", " ", part).strip()
        if part and part not in seen:
            seen.append(part)
    return seen


def technique_mode(technique: str) -> str:
    key = normalise(technique)
    if key in TECHNIQUE_TABLE:
        return TECHNIQUE_TABLE[key][1]
    return "unspecified"


def technique_family(technique: str, categories: Iterable[str] = ()) -> str | None:
    """Family of a technique string; `categories` resolves plain cross-polarised light.

    Returns None for an empty technique (a record without one); raises
    UnmappedLabelError for a non-empty string that no entry or rule places.
    """
    key = normalise(technique)
    if not key:
        return None
    if key == CROSS_POLARISED_AMBIGUOUS:
        return OPTICAL_REFLECTED if METAL in set(categories) else OPTICAL_TRANSMITTED
    if key in TECHNIQUE_TABLE:
        return TECHNIQUE_TABLE[key][0]
    for pattern, family in _RULES:
        if pattern.search(key):
            return family
    if "polari" in key or "light" in key or "optical" in key:
        # Light microscopy with no side given: reflected is the metallographic default.
        return OPTICAL_REFLECTED
    raise UnmappedLabelError(
        f"technique {technique!r} maps to no family; add it to TECHNIQUE_TABLE"
    )


def coarse_class(family: str | None) -> str | None:
    """The earlier study's 4-class view (SEM, TEM, AFM, Optical); None for Other/unknown."""
    if family in (OPTICAL_REFLECTED, OPTICAL_TRANSMITTED):
        return OPTICAL
    if family in (SEM, TEM, AFM):
        return family
    return None


def primary_category(categories: Iterable[str]) -> str | None:
    """One material class per record, for the single-label category task.

    Rule (documented in the README taxonomy table):
    1. "Composite" in the set (incl. Polymer composite, Metal matrix composite) -> Composite.
    2. Otherwise the base material: Metal or alloy, then Ceramic, then Polymer. "Fracture" and
       "Foam" describe a feature, not a material, and are ignored here. "Oxide" is a ceramic.
       "Ceramic, Polymer" (8 carbon records: nanotubes, fibres) -> Ceramic: carbon is an
       inorganic non-metal, and the tag order on the site puts Ceramic first.
    3. Nothing left ("Device", or no categories) -> None: excluded from the task and counted.
    """
    cats = {c.strip() for c in categories}  # a blank one ("") matches no rule below
    if any("composite" in c.lower() and "foam" not in c.lower() for c in cats):
        return COMPOSITE
    if METAL in cats:
        return METAL
    if CERAMIC in cats or "Oxide" in cats:
        return CERAMIC
    if POLYMER in cats:
        return POLYMER
    return None
