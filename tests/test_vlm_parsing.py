"""Strict answer parsing: a table of realistic VLM outputs plus hypothesis properties."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from microqa.data import taxonomy
from microqa.vlm import parse_choice
from microqa.vlm.parsing import keyword_recall, map_description
from microqa.vlm.questions import build_question

L4 = ["A", "B", "C", "D"]
L5 = ["A", "B", "C", "D", "E"]
# The study's technique options (A SEM, B TEM, C AFM, D reflected, E transmitted).
TECH = build_question("technique").options_by_letter()
COARSE = build_question("technique_coarse", "earlier_study").options_by_letter()

TABLE = [
    # plain letters and the usual wrappers
    ("D", L4, None, "D"),
    ("d", L4, None, "D"),
    (" B\n", L4, None, "B"),
    ("(B)", L4, None, "B"),
    ("[C]", L4, None, "C"),
    ("b)", L4, None, "B"),
    ("C.", L4, None, "C"),
    ("**B**", L4, None, "B"),
    ("**(C)**", L4, None, "C"),
    ("Answer: C", L4, None, "C"),
    ("ANSWER: D", L4, None, "D"),  # the earlier study read this as A
    ("answer: c", L4, None, "C"),
    ("**Answer:** B", L4, None, "B"),
    ("The answer is D.", L4, None, "D"),
    ("The correct answer is: (B)", L4, None, "B"),
    ("The correct option is **B**.", L4, None, "B"),
    ("Option C", L4, None, "C"),
    ("It's C.", L4, None, "C"),
    ("It\u2019s B", L4, None, "B"),
    ("I would choose B because of the contrast.", L4, None, "B"),
    ("D. Optical microscopy", COARSE, None, "D"),
    ("D) Optical microscopy", L4, COARSE, "D"),
    ("C: AFM", L4, COARSE, "C"),
    ("B - TEM", L4, COARSE, "B"),
    ("C is correct.", L4, None, "C"),
    ("The image shows dendrites and a eutectic.\nD", L4, None, "D"),
    ("Based on the grain contrast, the answer is B.", L4, None, "B"),
    ("Answer: E", L5, None, "E"),
    # an option's own text, with or without the letter
    ("Scanning electron microscopy (SEM)", L5, TECH, "A"),
    ("SEM", L5, TECH, "A"),
    ("Transmitted-light optical microscopy.", L5, TECH, "E"),
    ("Reflected light microscopy", L4, COARSE, "D"),
    ("This is not SEM; it is transmission electron microscopy.", L5, TECH, "B"),
    ("B) Transmission electron microscopy (TEM)", L5, TECH, "B"),
    # refusals, hedges, articles, contradictions, out-of-range letters: never a guess
    ("A or B", L4, None, None),
    ("The answer is B or C.", L4, None, None),
    ("B/C", L4, None, None),
    ("Either A or D, hard to say.", L4, None, None),
    ("A scanning electron micrograph of a fracture surface.", L5, TECH, None),
    ("A TEM image, probably.", L4, None, None),
    ("The answer is a thin film.", L4, None, None),
    ("I'm sorry, but I cannot determine the technique from this image.", L4, None, None),
    ("I cannot be certain, but the answer is B.", L4, None, None),
    ("None of the above.", L4, None, None),
    ("It is unclear.", L4, None, None),
    ("", L4, None, None),
    ("   ", L4, None, None),
    (None, L4, None, None),
    ("A) SEM B) TEM C) AFM D) Optical microscopy", L4, COARSE, None),
    ("B) Scanning electron microscopy (SEM)", L5, TECH, None),  # letter and text disagree
    ("Answer: F", L5, None, None),
    ("Answer: E", L4, None, None),
    ("The microstructure is 3D and shows grains.", L4, None, None),
    ("Bob", L4, None, None),
    ("It shows SEM-like contrast but could be TEM.", L4, COARSE, None),
    ("options A and B both fit", L4, None, None),
    ("(A) (B)", L4, None, None),
    # hedges that keep a second option open: no answer
    ("Probably C, though A is possible.", L4, None, None),
    ("C, but A is also possible.", L4, None, None),
    ("Most likely D, possibly B.", L4, None, None),
    ("I think it is C; however, it could also be A.", L4, None, None),
    ("C is the best match, although B cannot be ruled out.", L4, None, None),
    ("It looks like option B... or maybe C.", L4, None, None),
    ("Likely A (SEM), but could be B (TEM).", L4, COARSE, None),
    ("Answer: C (or possibly D)", L4, None, None),
    ("B. I cannot rule out A, given the contrast.", L4, None, None),
    ("**D** seems right, though **E** might fit as well.", L5, None, None),
    ("The answer is most likely B; option D is a close second possibility.", L4, None, None),
    ("I'd go with A, perhaps C.", L4, None, None),
    # a commitment, then another: no answer
    ("B. No wait, D.", L4, None, None),
    ("My answer is C. Final answer: A", L4, None, None),
    ("The answer is A. Actually, looking again at the fringes, it is B.", L4, None, None),
    ("Answer: B\nOn second thought, C.", L4, None, None),
    ("C) AFM. Correction: D) Optical microscopy.", L4, COARSE, None),
    # two explicit answer statements that disagree: a change of mind, no answer (never the last)
    ("The answer is B. The contrast is typical of a replica. Final answer: C", L4, None, None),
    ("Answer: B. Final: C", L4, None, None),
    ("The answer is B. ... C", L4, None, None),
    ("B is correct. Looking again at the fringes, C is the answer.", L4, None, None),
    ("I pick B. Therefore C.", L4, None, None),
    ("Answer: B\n\nConclusion: D.", L4, None, None),
    ("So the answer must be B. The best answer is C.", L4, None, None),
    # ... and statements that agree, or exclude the other option, keep the answer
    ("The answer is B. The contrast is typical of a replica. Final answer: B", L4, None, "B"),
    ("C is correct. Final answer: C", L4, None, "C"),
    ("C is not correct; the answer is B.", L4, None, "B"),
    ("Therefore D.", L4, None, "D"),
    # one option committed, the others excluded or merely discussed: the answer stands
    ("The answer is C, not A.", L4, None, "C"),
    ("C. Not A.", L4, None, "C"),
    ("C. It is clearly not option A.", L4, None, "C"),
    ("D, since it is not A or B.", L4, None, "D"),
    ("B - the contrast rules out A and C.", L4, None, "B"),
    ("C rather than A.", L4, None, "C"),
    ("The answer is C. A TEM would show lattice fringes.", L4, None, "C"),
    ("D. A polarised-light image of a steel.", L4, None, "D"),
    ("Answer: E. Neither A nor B fits the birefringent colours.", L5, None, "E"),
    ("It is (A), nor is the answer B.", L4, None, "A"),
    ("The answer is B; there are no signs of an AFM tip artefact.", L4, None, "B"),
]


@pytest.mark.parametrize("text,letters,options,expected", TABLE)
def test_parser_table(text, letters, options, expected):
    assert parse_choice(text, letters, options) == expected


def test_table_is_varied():
    assert len(TABLE) >= 80
    assert sum(e is None for *_, e in TABLE) >= 40


# --- properties --------------------------------------------------------------------------------

COMMIT_TEMPLATES = ["({L})", "[{L}]", "**{L}**", "Answer: {L}.", "The answer is {L}.", "{L})"]
ALONE_TEMPLATES = COMMIT_TEMPLATES + ["{L}", "{l}", "{L}.", "Option {L}", "ANSWER: {L}", "{l})"]
FILLER = st.text(alphabet=string.ascii_letters + string.digits + " .,;:!?'-\n", max_size=40)
letters_strategy = st.integers(min_value=2, max_value=8).map(
    lambda n: list(string.ascii_uppercase[:n])
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), letters=letters_strategy)
def test_boilerplate_around_a_letter_parses_to_it(data, letters):
    letter = data.draw(st.sampled_from(letters))
    template = data.draw(st.sampled_from(ALONE_TEMPLATES))
    pad = data.draw(st.sampled_from(["", " ", "\n", "  \n"]))
    text = pad + template.format(L=letter, l=letter.lower()) + pad
    assert parse_choice(text, letters) == letter


# A filler word that negates the letter after it: "(A) nor the answer is B" excludes B, by
# design ("it is not option A"), so such fillers are not two commitments.
NEGATING = re.compile(
    r"\b(?:not|no|nor|neither|never|isn't|wasn't|unlike|except|rather|instead|rul\w*|exclud\w*)\b",
    re.IGNORECASE,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), letters=letters_strategy, before=FILLER, between=FILLER, after=FILLER)
def test_two_different_committed_letters_parse_to_none(data, letters, before, between, after):
    assume(not NEGATING.search(f"{before} {between}"))
    first, second = data.draw(
        st.lists(st.sampled_from(letters), min_size=2, max_size=2, unique=True)
    )
    t1, t2 = (data.draw(st.sampled_from(COMMIT_TEMPLATES)) for _ in range(2))
    text = " ".join([before, t1.format(L=first), between, t2.format(L=second), after])
    assert parse_choice(text, letters) is None


ANSWER_STATEMENTS = [
    "The answer is {L}.",
    "Answer: {L}",
    "Final answer: {L}",
    "Final: {L}",
    "Therefore {L}.",
    "{L} is correct.",
    "{L} is the answer.",
    "My choice: {L}",
    "I select {L}.",
    "So the answer must be {L}.",
    "Conclusion: {L}.",
]
REASONING = ["\n", "\n\n", " ... ", ". The contrast suggests it. ", "\nLooking again, "]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), letters=letters_strategy)
def test_two_answer_statements_that_disagree_give_no_answer(data, letters):
    """A change of mind is no answer: never the first and never the last statement."""
    first, second = data.draw(
        st.lists(st.sampled_from(letters), min_size=2, max_size=2, unique=True)
    )
    s1, s2 = (data.draw(st.sampled_from(ANSWER_STATEMENTS)) for _ in range(2))
    between = data.draw(st.sampled_from(REASONING))
    assert parse_choice(s1.format(L=first) + between + s2.format(L=second), letters) is None
    # the same statements agreeing on one letter are that letter
    assert parse_choice(s1.format(L=first) + between + s2.format(L=first), letters) == first


HEDGES = [
    "{A}, though {B} is possible.",
    "Probably {A}, but it could also be {B}.",
    "{A}; {B} cannot be ruled out.",
    "Most likely {A}, possibly {B}.",
    "{A}. Wait, actually {B}.",
    "The answer is {A}. On second thought, {B}.",
]
EXCLUSIONS = ["{A}, not {B}.", "{A}. It is not option {B}.", "{A}, rather than {B}."]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), letters=letters_strategy)
def test_a_second_option_kept_open_parses_to_none_an_excluded_one_does_not(data, letters):
    first, second = data.draw(
        st.lists(st.sampled_from(letters), min_size=2, max_size=2, unique=True)
    )
    hedge = data.draw(st.sampled_from(HEDGES)).format(A=first, B=second)
    assert parse_choice(hedge, letters) is None, hedge
    exclusion = data.draw(st.sampled_from(EXCLUSIONS)).format(A=first, B=second)
    assert parse_choice(exclusion, letters) == first, exclusion


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=80), letters=letters_strategy)
def test_output_is_none_or_an_offered_letter(text, letters):
    assert parse_choice(text, letters) in {None, *letters}


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=string.ascii_letters + " ().:*\n", max_size=60))
def test_option_texts_never_produce_an_unoffered_letter(text):
    assert parse_choice(text, L5, TECH) in {None, *L5}


# --- descriptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,technique,category",
    [
        ("This SEM image shows a fracture surface of a steel.", taxonomy.SEM, taxonomy.METAL),
        (
            "Bright-field transmission electron micrograph of dislocations in an aluminium alloy.",
            taxonomy.TEM,
            taxonomy.METAL,
        ),
        ("Atomic force microscopy height map of a polymer film.", taxonomy.AFM, taxonomy.POLYMER),
        (
            "Transmitted polarised light micrograph of polyethylene spherulites in thin section.",
            taxonomy.OPTICAL_TRANSMITTED,
            taxonomy.POLYMER,
        ),
        (
            "Optical micrograph (reflected light) of a etched brass.",
            taxonomy.OPTICAL_REFLECTED,
            taxonomy.METAL,
        ),
        (
            "A light microscope image of alumina grains.",
            taxonomy.OPTICAL_REFLECTED,
            taxonomy.CERAMIC,
        ),
        (
            "A fibre-reinforced composite with an epoxy matrix, imaged by SEM.",
            taxonomy.SEM,
            taxonomy.COMPOSITE,
        ),
        ("It could be SEM or TEM; the material is unclear.", None, None),
        (
            "The image is not an SEM image; it is an atomic force microscopy scan of glass.",
            taxonomy.AFM,
            taxonomy.CERAMIC,
        ),
        ("", None, None),
    ],
)
def test_map_description(text, technique, category):
    assert map_description(text) == (technique, category)


def test_keyword_recall_counts_stems_and_phrases():
    keywords = ["alloy", "dendrites", "lamella", "grain boundary", "martensite"]
    text = "Dendrites in alloys, with lamellae along each grain-boundary."
    assert keyword_recall(text, keywords) == pytest.approx(4 / 5)
    assert keyword_recall("nothing relevant", keywords) == 0.0
    assert keyword_recall("anything", []) is None


def test_bare_words_inside_an_option_name_are_not_mentions():
    options = {
        "A": ("Reflected-light optical microscopy", "Optical (reflected)"),
        "B": ("Transmitted-light optical microscopy", "Optical (transmitted)"),
    }
    assert parse_choice("x-ray image, reflected somewhere", ["A", "B"], options) is None
    assert parse_choice("Optical (transmitted)", ["A", "B"], options) == "B"
    assert parse_choice("optical microscopy", ["A", "B"], options) is None  # both optical
