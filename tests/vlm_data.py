"""A small real dataset directory (records.csv + image files) and CLIP-stage outputs for the
VLM tests, built from scratch so they need nothing outside the repository."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from microqa.data.dataset import RECORD_COLUMNS

# (technique string as on the site, categories): two records (one specimen) each.
SPECIMENS = [
    ("Scanning electron microscopy (SEM)", "Fracture, Metal or alloy"),
    ("Scanning electron microscopy (SEM) in backscattered electron imaging (BEI) mode", "Ceramic"),
    ("Transmission electron microscopy (TEM)", "Metal or alloy"),
    ("High resolution electron microscopy (HREM)", "Ceramic, Composite"),
    ("Atomic force microscopy (AFM)", "Polymer"),
    ("Reflected light microscopy", "Metal or alloy"),
    ("Transmitted polarised light microscopy", "Polymer"),
    ("Cross-polarised light microscopy", "Device"),  # transmitted; no primary category
    ("Photography (no microscope)", "Metal or alloy"),  # family Other: not in the QA sample
]
KEYWORDS = [
    "alloy, dendrite, eutectic",
    "grain boundary, pores",
    "dislocation, precipitate",
    "lattice, interface",
    "spherulite, lamella",
    "pearlite, ferrite",
    "spherulite, birefringence",
    "liquid crystal",
    "fracture, casting",
]
CLASSES = {
    "technique": ("SEM", "TEM", "AFM", "Optical (reflected)", "Optical (transmitted)"),
    "category": ("Metal or alloy", "Ceramic", "Polymer", "Composite"),
    "technique_coarse": ("SEM", "TEM", "AFM", "Optical"),
}


def make_dataset(root: Path, *, seed: int = 0) -> Path:
    """records.csv + images/NNNNNN.<ext> (JPEG, PNG, GIF) for 18 records of 9 specimens."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    number = 100
    for s, (technique, categories) in enumerate(SPECIMENS):
        for copy in range(2):
            number += 1
            pixels = rng.integers(0, 256, size=(40 + 8 * s, 56 + 4 * copy), dtype=np.uint8)
            image = Image.fromarray(pixels, mode="L")
            ext = ("jpg", "png", "gif")[number % 3]
            image.save(root / "images" / f"{number:06d}.{ext}")
            row = dict.fromkeys(RECORD_COLUMNS, "")
            row.update(
                micrograph_no=str(number),
                brief_description=f"Specimen {s}: test material number {s}",
                keywords=KEYWORDS[s],
                categories=categories,
                technique=technique,
            )
            rows.append(row)
    with open(root / "records.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RECORD_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_clip_outputs(
    clip_dir: Path, numbers: list[int], groups: list[str], *, seed: int = 0
) -> Path:
    """zero_shot_scores.csv, best_prompt_sets.csv, features.npz/json as the CLIP stage writes.

    Images of one specimen get almost identical embeddings, so a neighbour search that forgot
    to exclude the specimen would pick them first."""
    rng = np.random.default_rng(seed)
    clip_dir.mkdir(parents=True, exist_ok=True)
    score_rows = []
    for n in numbers:
        for task, classes in CLASSES.items():
            for prompt_set in ("plain", "ensemble"):
                probs = rng.dirichlet(np.ones(len(classes)))
                score_rows += [
                    {
                        "micrograph_no": n,
                        "model": "ViT-B-32:openai",
                        "weights": "random",
                        "task": task,
                        "prompt_set": prompt_set,
                        "class": c,
                        "probability": p,
                    }
                    for c, p in zip(classes, probs, strict=True)
                ]
    import pandas as pd

    pd.DataFrame(score_rows).to_csv(clip_dir / "zero_shot_scores.csv", index=False)
    # cross-fitted choices: a set per fold of specimens (the study's default fold names)
    pd.DataFrame(
        [
            {"model": "ViT-B-32:openai", "task": t, "fold": fold, "prompt_set": prompt_set}
            for t in CLASSES
            for fold, prompt_set in (("select", "ensemble"), ("evaluate", "plain"))
        ]
    ).to_csv(clip_dir / "best_prompt_sets.csv", index=False)
    centres = {g: rng.normal(size=16) for g in dict.fromkeys(groups)}
    emb = np.array([centres[g] + 0.01 * rng.normal(size=16) for g in groups], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(clip_dir / "features.npz", micrograph_no=np.array(numbers), embeddings=emb)
    (clip_dir / "features.json").write_text(json.dumps({"source": "test", "pretrained": False}))
    return clip_dir
