"""The questions the study asks a VLM, with every prompt text in one readable place.

A *prompt set* fixes the wording of one task's multiple-choice question and the text shown
for each option. Two sets exist:

- `study`: this study's wording; options are the full class names (5 technique families,
  4 primary material categories), one per line.
- `earlier_study`: the earlier study's exact prompts (github.com/Subham2507/mic_hackathon,
  qwen.ipynb / mistral.ipynb): technique on its 4 coarse classes with "Reflected light
  microscopy" standing for all optical images, and category with five options including
  "Fracture", which is a feature, not a material: never a correct answer under primary labels.

Options are lettered A, B, C, ... in the taxonomy's class order, or, with `permute=True`, in an
order seeded per image (to measure position bias). A run may reword the `study` set
(`with_wording`, the profile's `vlm_questions`); the classes stay the taxonomy's. The prompt a
backend receives is the whole user text: optional CLIP context, the question, the options and
the final instruction.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from microqa.data import taxonomy

ANSWER_INSTRUCTION = "Answer with the letter only."

# The open question; the free text is mapped back to technique/category by the parser.
DESCRIBE_PROMPT = (
    "Describe this micrograph: the imaging technique used to capture it, the kind of material "
    "shown, and the visible microstructural features."
)


@dataclass(frozen=True)
class PromptSet:
    name: str
    task: str  # a key of taxonomy.TASKS
    question: str
    option_text: dict[str, str]  # class name -> text shown after the letter
    layout: str = "study"  # "study": "A) text" lines; "earlier": its "A. text" block layout


STUDY_TECHNIQUE = PromptSet(
    name="study",
    task="technique",
    question="Which imaging technique was used to capture this micrograph?",
    option_text={
        taxonomy.SEM: "Scanning electron microscopy (SEM)",
        taxonomy.TEM: "Transmission electron microscopy (TEM)",
        taxonomy.AFM: "Atomic force microscopy (AFM)",
        taxonomy.OPTICAL_REFLECTED: "Reflected-light optical microscopy",
        taxonomy.OPTICAL_TRANSMITTED: "Transmitted-light optical microscopy",
    },
)
STUDY_CATEGORY = PromptSet(
    name="study",
    task="category",
    question="What class of material is shown in this micrograph?",
    option_text={
        taxonomy.METAL: "Metal or alloy",
        taxonomy.CERAMIC: "Ceramic",
        taxonomy.POLYMER: "Polymer",
        taxonomy.COMPOSITE: "Composite",
    },
)
# The earlier study's prompts, verbatim.
EARLIER_INSTRUCTION = "Answer with only one letter."
EARLIER_TECHNIQUE = PromptSet(
    name="earlier_study",
    task="technique_coarse",
    question="Look carefully at the microscopy image and identify the imaging technique.",
    option_text={
        taxonomy.SEM: "Scanning electron microscopy (SEM)",
        taxonomy.TEM: "Transmission electron microscopy (TEM)",
        taxonomy.AFM: "Atomic force microscopy (AFM)",
        "Optical": "Reflected light microscopy",
    },
    layout="earlier",
)
EARLIER_CATEGORY = PromptSet(
    name="earlier_study",
    task="category",
    question="Which material category best describes the image?",
    option_text={**{c: c for c in taxonomy.PRIMARY_CATEGORIES}, "Fracture": "Fracture"},
    layout="earlier",
)

PROMPT_SETS: dict[tuple[str, str], PromptSet] = {
    (p.task, p.name): p
    for p in (STUDY_TECHNIQUE, STUDY_CATEGORY, EARLIER_TECHNIQUE, EARLIER_CATEGORY)
}
# What a full run asks: (task, prompt set). CLIP context applies to the study's own wording;
# the earlier study's prompts are asked as it asked them, without context.
DEFAULT_JOBS: tuple[tuple[str, str], ...] = (
    ("technique", "study"),
    ("category", "study"),
    ("technique_coarse", "earlier_study"),
    ("category", "earlier_study"),
)
CONTEXTS = ("none", "clip_topk", "clip_neighbours")


PromptSets = Mapping[tuple[str, str], PromptSet]


def with_wording(wording: Mapping[str, Mapping] | None = None) -> dict[tuple[str, str], PromptSet]:
    """The prompt sets with the `study` set's wording replaced where `wording` says (a run's
    `vlm_questions`, e.g. notebook 04's parameter): {task: {"question": text, "options":
    {class: text}}}, either key optional; the classes stay the taxonomy's, so every option is
    named. None: the wording above. Bad wording is a one-line ValueError."""
    sets = dict(PROMPT_SETS)
    for task, change in (wording or {}).items():
        base = sets.get((task, "study"))
        if base is None:
            tasks = sorted(t for t, n in PROMPT_SETS if n == "study")
            raise ValueError(f"vlm_questions: no study question for task {task!r}; tasks: {tasks}")
        if not isinstance(change, Mapping) or not set(change) <= {"question", "options"}:
            raise ValueError(f'vlm_questions[{task!r}] must be {{"question": ..., "options": ...}}')
        question = change.get("question", base.question)
        options = dict(change.get("options", base.option_text))
        if set(options) != set(base.option_text):
            raise ValueError(
                f"vlm_questions[{task!r}]: options must name exactly {list(base.option_text)}"
            )
        texts = [question, *options.values()]
        if not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"vlm_questions[{task!r}]: every text must be a non-empty string")
        ordered = {cls: options[cls].strip() for cls in base.option_text}  # the taxonomy's order
        sets[(task, "study")] = replace(base, question=question.strip(), option_text=ordered)
    return sets


def prompt_set(task: str, name: str = "study", sets: PromptSets | None = None) -> PromptSet:
    sets = PROMPT_SETS if sets is None else sets
    try:
        return sets[(task, name)]
    except KeyError:
        known = ", ".join(f"{t}/{n}" for t, n in sets)
        raise ValueError(f"no prompt set {name!r} for task {task!r}; known: {known}") from None


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as shown to the model, and how to read its answer."""

    task: str
    prompt_set: str
    context: str  # "none", "clip_topk", "clip_neighbours"
    classes: tuple[str, ...]  # class names in the displayed order
    letters: tuple[str, ...]
    option_texts: tuple[str, ...]  # displayed text, aligned with letters
    prompt: str
    rotation: int = 0  # cyclic shift of the options (0: as ordered; see `rotations`)

    @property
    def permutation(self) -> str:
        """The option order as a string, e.g. 'SEM|TEM|AFM|Optical'."""
        return "|".join(self.classes)

    def class_of(self, letter: str | None) -> str | None:
        return None if letter is None else self.classes[self.letters.index(letter)]

    def options_by_letter(self) -> dict[str, str]:
        return dict(zip(self.letters, self.option_texts, strict=True))


def option_order(
    classes: tuple[str, ...], *, permute: bool, seed: int, key: str
) -> tuple[str, ...]:
    """The taxonomy order, or a permutation seeded by (seed, key) so reruns ask the same thing."""
    if not permute:
        return classes
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    return tuple(classes[i] for i in rng.permutation(len(classes)))


def rotations(task: str, prompt_set_name: str = "study", sets: PromptSets | None = None) -> range:
    """The cyclic rotations of a question's options: one per option (MMBench's CircularEval),
    so every class is shown under every letter exactly once."""
    return range(len(prompt_set(task, prompt_set_name, sets).option_text))


def build_question(
    task: str,
    prompt_set_name: str = "study",
    *,
    context: str = "none",
    context_text: str | None = None,
    permute: bool = False,
    seed: int = 0,
    image_key: str = "",
    rotation: int = 0,
    sets: PromptSets | None = None,
) -> Question:
    """Render a question; `image_key` (e.g. the micrograph number) seeds its permutation and
    `rotation` shifts the options cyclically (rotation r shows option i under letter i - r).
    `sets`: the prompt sets in use (`with_wording`); None: the module's own."""
    pset = prompt_set(task, prompt_set_name, sets)
    classes = option_order(
        tuple(pset.option_text), permute=permute, seed=seed, key=f"{task}/{image_key}"
    )
    if not 0 <= rotation < len(classes):
        raise ValueError(f"rotation {rotation} out of range for {len(classes)} options")
    classes = classes[rotation:] + classes[:rotation]
    letters = tuple(string.ascii_uppercase[: len(classes)])
    texts = tuple(pset.option_text[c] for c in classes)
    if pset.layout == "earlier":
        options = [f"{letter}. {text}" for letter, text in zip(letters, texts, strict=True)]
        body = f"{pset.question}\n\n" + "\n".join(options) + f"\n\n{EARLIER_INSTRUCTION}"
    else:
        options = [f"{letter}) {text}" for letter, text in zip(letters, texts, strict=True)]
        body = "\n".join([pset.question, *options, ANSWER_INSTRUCTION])
    prompt = f"{context_text.strip()}\n\n{body}" if context_text else body
    return Question(task, pset.name, context, classes, letters, texts, prompt, rotation)
