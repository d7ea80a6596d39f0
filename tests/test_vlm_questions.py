"""Question rendering: the earlier study's prompt verbatim, seeded option permutations, a run's
own wording."""

from __future__ import annotations

from collections import Counter

import pytest

from microqa.data import taxonomy
from microqa.vlm import questions
from microqa.vlm.questions import ANSWER_INSTRUCTION, build_question


def test_earlier_study_prompts_are_verbatim():
    # as in the earlier study's qwen.ipynb (technique_mcq_prompt, category_mcq_prompt)
    q = build_question("technique_coarse", "earlier_study")
    assert q.prompt == (
        "Look carefully at the microscopy image and identify the imaging technique.\n\n"
        "A. Scanning electron microscopy (SEM)\n"
        "B. Transmission electron microscopy (TEM)\n"
        "C. Atomic force microscopy (AFM)\n"
        "D. Reflected light microscopy\n\n"
        "Answer with only one letter."
    )
    assert q.classes == taxonomy.COARSE_CLASSES
    q = build_question("category", "earlier_study")
    assert q.prompt == (
        "Which material category best describes the image?\n\n"
        "A. Metal or alloy\nB. Ceramic\nC. Polymer\nD. Composite\nE. Fracture\n\n"
        "Answer with only one letter."
    )
    # "Fracture" is offered, as the earlier study did, but is never a primary category
    assert q.class_of("E") == "Fracture" and "Fracture" not in taxonomy.PRIMARY_CATEGORIES


def test_study_prompt_lists_full_names_one_per_line_and_ends_with_the_instruction():
    q = build_question("technique")
    lines = q.prompt.splitlines()
    assert lines[1] == "A) Scanning electron microscopy (SEM)"
    assert len(lines) == 2 + len(taxonomy.TECHNIQUE_FAMILIES) and lines[-1] == ANSWER_INSTRUCTION
    assert q.classes == taxonomy.TECHNIQUE_FAMILIES and q.letters == tuple("ABCDE")
    assert q.class_of("D") == taxonomy.OPTICAL_REFLECTED and q.class_of(None) is None


def test_context_comes_before_the_question():
    q = build_question("category", context="clip_topk", context_text="Hint: Ceramic (0.9).")
    assert q.prompt.startswith("Hint: Ceramic (0.9).\n\nWhat class of material")
    assert q.prompt.endswith(ANSWER_INSTRUCTION)


def test_permutations_are_seeded_per_image_and_cover_every_position():
    orders = [
        build_question("technique", permute=True, seed=0, image_key=str(i)).classes
        for i in range(200)
    ]
    again = [
        build_question("technique", permute=True, seed=0, image_key=str(i)).classes
        for i in range(200)
    ]
    assert orders == again  # a rerun asks exactly the same questions (cache hits)
    assert all(sorted(o) == sorted(taxonomy.TECHNIQUE_FAMILIES) for o in orders)
    for position in range(5):  # each class visits each position roughly uniformly
        counts = Counter(o[position] for o in orders)
        assert set(counts) == set(taxonomy.TECHNIQUE_FAMILIES) and min(counts.values()) >= 20
    other_seed = [
        build_question("technique", permute=True, seed=1, image_key=str(i)).classes
        for i in range(200)
    ]
    assert other_seed != orders


def test_a_run_may_reword_the_study_questions_but_not_their_classes():
    reworded = questions.with_wording(
        {
            "technique": {"question": "  How was this imaged?  "},
            "category": {
                "options": {
                    "Composite": "A composite",
                    "Metal or alloy": "A metal",
                    "Polymer": "A polymer",
                    "Ceramic": "A ceramic",
                }
            },
        }
    )
    asked = build_question("technique", sets=reworded)
    assert asked.prompt.splitlines()[0] == "How was this imaged?"
    assert asked.option_texts == build_question("technique").option_texts
    category = build_question("category", sets=reworded, rotation=1)
    assert category.classes == ("Ceramic", "Polymer", "Composite", "Metal or alloy")
    assert category.option_texts == ("A ceramic", "A polymer", "A composite", "A metal")
    assert category.prompt.splitlines()[0] == build_question("category").prompt.splitlines()[0]
    # the earlier study's prompts stay verbatim, and the module's own wording is untouched
    assert (
        reworded[("category", "earlier_study")]
        == questions.PROMPT_SETS[("category", "earlier_study")]
    )
    assert build_question("technique").prompt.startswith("Which imaging technique")


@pytest.mark.parametrize(
    ("wording", "message"),
    [
        ({"technique_coarse": {"question": "?"}}, "no study question for task 'technique_coarse'"),
        ({"category": {"options": {"Metal or alloy": "metal"}}}, "options must name exactly"),
        ({"category": {"question": "  "}}, "every text must be a non-empty string"),
        ({"category": {"wording": "?"}}, r"must be \{\"question\""),
    ],
)
def test_bad_wording_is_a_one_line_error(wording, message):
    with pytest.raises(ValueError, match=message):
        questions.with_wording(wording)
