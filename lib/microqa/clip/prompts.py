"""Every text the CLIP stage shows the text encoder, in one readable place.

Three prompt sets per task (classes as in `taxonomy.TASKS`), compared in notebook 03:

- `earlier-study`: the earlier study's one short prompt per class ("a SEM image"). Its
  technique prompts had a single optical class; for the 5-family view the optical prompt
  is split into reflected / transmitted in the same plain style.
- `ensemble`: every template x every class name; the class embedding is the mean of the
  normalised text embeddings, renormalised (as in CLIP's ImageNet ensemble and LAION's
  CLIP_benchmark).
- `descriptions`: one or two short class descriptions written from materials knowledge:
  what an image of that technique or material typically looks like.
"""

from __future__ import annotations

import hashlib
import json

from microqa.data import taxonomy

EARLIER, ENSEMBLE, DESCRIPTIONS = "earlier-study", "ensemble", "descriptions"
PROMPT_SET_NAMES = (EARLIER, ENSEMBLE, DESCRIPTIONS)

_OPTICAL_SINGLE = "an optical microscopy image"

EARLIER_STUDY: dict[str, dict[str, list[str]]] = {
    "technique": {
        taxonomy.SEM: ["a SEM image"],
        taxonomy.TEM: ["a TEM image"],
        taxonomy.AFM: ["an AFM image"],
        taxonomy.OPTICAL_REFLECTED: ["a reflected light optical microscopy image"],
        taxonomy.OPTICAL_TRANSMITTED: ["a transmitted light optical microscopy image"],
    },
    "technique_coarse": {
        taxonomy.SEM: ["a SEM image"],
        taxonomy.TEM: ["a TEM image"],
        taxonomy.AFM: ["an AFM image"],
        "Optical": [_OPTICAL_SINGLE],
    },
    "category": {
        taxonomy.METAL: ["a micrograph of a metal or alloy"],
        taxonomy.CERAMIC: ["a micrograph of a ceramic"],
        taxonomy.POLYMER: ["a micrograph of a polymer"],
        taxonomy.COMPOSITE: ["a micrograph of a composite material"],
    },
}

TECHNIQUE_TEMPLATES = (
    "a {} image.",
    "a {} micrograph.",
    "a micrograph taken with {}.",
    "an image of a material specimen obtained by {}.",
    "a {} image of a materials science sample.",
    "a picture from a {} study of a microstructure.",
)
CATEGORY_TEMPLATES = (
    "a micrograph of a {}.",
    "a microstructure of a {}.",
    "a microscope image of a {} specimen.",
    "the microstructure of a {} seen under a microscope.",
    "a materials science image of a {}.",
)

# Names each class goes by; each is put into every template of its task.
CLASS_NAMES: dict[str, dict[str, list[str]]] = {
    "technique": {
        taxonomy.SEM: ["SEM", "scanning electron microscopy", "scanning electron microscope"],
        taxonomy.TEM: [
            "TEM",
            "transmission electron microscopy",
            "transmission electron microscope",
        ],
        taxonomy.AFM: ["AFM", "atomic force microscopy", "atomic force microscope"],
        taxonomy.OPTICAL_REFLECTED: [
            "reflected light microscopy",
            "optical metallography",
            "reflected light optical microscope",
        ],
        taxonomy.OPTICAL_TRANSMITTED: [
            "transmitted light microscopy",
            "polarised transmitted light microscopy",
            "thin section optical microscope",
        ],
    },
    "technique_coarse": {},  # the electron and probe microscopes of "technique", see below
    "category": {
        taxonomy.METAL: ["metal", "metal alloy", "steel or aluminium alloy"],
        taxonomy.CERAMIC: ["ceramic", "oxide ceramic", "glass or mineral"],
        taxonomy.POLYMER: ["polymer", "plastic", "semicrystalline polymer"],
        taxonomy.COMPOSITE: [
            "composite material",
            "fibre-reinforced composite",
            "particle composite",
        ],
    },
}
CLASS_NAMES["technique_coarse"] = {
    **{c: CLASS_NAMES["technique"][c] for c in (taxonomy.SEM, taxonomy.TEM, taxonomy.AFM)},
    "Optical": ["optical microscopy", "light microscopy", "optical microscope"],
}

_REFLECTED = (
    "a reflected light optical micrograph of a polished and etched metal surface showing grains, "
    "grain boundaries and phases such as pearlite, martensite or dendrites in grey, brown or "
    "tinted colours"
)
_TRANSMITTED = (
    "a transmitted light optical micrograph of a thin section or film, such as polymer "
    "spherulites or mineral grains, often with bright birefringence colours under crossed polars"
)
_DESCRIPTIONS: dict[str, dict[str, list[str]]] = {
    "technique": {
        taxonomy.SEM: [
            "a scanning electron micrograph: a greyscale image with strong topographic shading, "
            "bright edges and a large depth of field, showing fracture surfaces, particles or "
            "etched features",
        ],
        taxonomy.TEM: [
            "a transmission electron micrograph: a greyscale image of a thin foil showing "
            "dislocations, precipitates, stacking faults or lattice fringes at the nanometre scale",
        ],
        taxonomy.AFM: [
            "an atomic force microscope height map: false-coloured surface topography with a "
            "colour height scale, showing nanoscale bumps, steps and terraces",
        ],
        taxonomy.OPTICAL_REFLECTED: [_REFLECTED],
        taxonomy.OPTICAL_TRANSMITTED: [_TRANSMITTED],
    },
    "category": {
        taxonomy.METAL: [
            "a micrograph of a metal or alloy: polished and etched grains, twins, pearlite, "
            "martensite, dendrites or eutectic lamellae",
        ],
        taxonomy.CERAMIC: [
            "a micrograph of a ceramic: sintered equiaxed grains with pores, a glass, or an "
            "oxide or mineral crystal structure",
        ],
        taxonomy.POLYMER: [
            "a micrograph of a polymer: spherulites, crazes, stretched films or a semicrystalline "
            "lamellar structure",
        ],
        taxonomy.COMPOSITE: [
            "a micrograph of a composite: reinforcing fibres or particles embedded in a matrix, "
            "seen in cross-section",
        ],
    },
}
_DESCRIPTIONS["technique_coarse"] = {
    **{c: _DESCRIPTIONS["technique"][c] for c in (taxonomy.SEM, taxonomy.TEM, taxonomy.AFM)},
    "Optical": [_REFLECTED, _TRANSMITTED],
}


def _ensemble(task: str) -> dict[str, list[str]]:
    templates = CATEGORY_TEMPLATES if task == "category" else TECHNIQUE_TEMPLATES
    return {
        cls: [template.format(name) for name in names for template in templates]
        for cls, names in CLASS_NAMES[task].items()
    }


def prompt_sets(task: str, chosen: dict | None = None) -> dict[str, dict[str, list[str]]]:
    """{prompt set name: {class: [prompt texts]}} for a task, classes in the task's order.

    `chosen`: a run's own prompt sets ({set name: {task: {class: [texts]}}}, the profile's
    `clip_prompt_sets`, e.g. from notebook 03's parameter); None: the three sets above. A set
    that leaves out a task is not scored on it; one that leaves out a class of it is an error."""
    if task not in taxonomy.TASKS:
        raise KeyError(f"unknown task {task!r}; choose one of {sorted(taxonomy.TASKS)}")
    classes = taxonomy.TASKS[task][1]
    if chosen is None:
        sets = {
            EARLIER: EARLIER_STUDY[task],
            ENSEMBLE: _ensemble(task),
            DESCRIPTIONS: _DESCRIPTIONS[task],
        }
    else:
        sets = {name: by_task[task] for name, by_task in chosen.items() if task in by_task}
        for name, prompts in sets.items():
            missing = [cls for cls in classes if not prompts.get(cls)]
            if missing:
                raise ValueError(f"prompt set {name!r}, task {task!r}: no prompts for {missing}")
    return {name: {cls: list(prompts[cls]) for cls in classes} for name, prompts in sets.items()}


def every_prompt(chosen: dict | None = None) -> list[str]:
    """Every text of every prompt set of every task, in a stable order (duplicates kept)."""
    return [
        text
        for task in taxonomy.TASKS
        for prompt_set in prompt_sets(task, chosen).values()
        for texts in prompt_set.values()
        for text in texts
    ]


def prompts_record(chosen: dict | None = None) -> dict[str, object]:
    """The prompt sets a run used, by content, for provenance: every text and its hash."""
    sets = {task: prompt_sets(task, chosen) for task in taxonomy.TASKS}
    text = json.dumps(sets, sort_keys=True, ensure_ascii=False)
    return {
        "source": "microqa.clip.prompts" if chosen is None else "the run's clip_prompt_sets",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "sets": sets,
    }
