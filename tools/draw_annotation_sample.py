"""Draw the micrographs hand-labelled for the annotation detector (tests/data/annotation_boxes.csv).

A seeded random draw stratified by the coarse technique class, so that SEM (data bars), optical,
TEM and AFM micrographs all appear: ``python tools/draw_annotation_sample.py [MIRROR]`` prints the
micrograph numbers. The boxes themselves were drawn by eye on each image, not by the detector.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from microqa.data import taxonomy

SEED = 19  # issue 19
PER_CLASS = {taxonomy.SEM: 14, taxonomy.OPTICAL: 14, taxonomy.TEM: 8, taxonomy.AFM: 8}


def draw(mirror: Path) -> list[int]:
    """Micrograph numbers drawn per coarse technique class, among records that have an image."""
    present = {path.stem for path in (mirror / "images").iterdir()}
    by_class: dict[str, list[int]] = {name: [] for name in PER_CLASS}
    with open(mirror / "records.csv", newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            number = int(record["micrograph_no"])
            if f"{number:06d}" not in present:
                continue
            family = taxonomy.technique_family(
                record["technique"], taxonomy.split_multi(record["categories"])
            )
            coarse = taxonomy.coarse_class(family)
            if coarse in by_class:
                by_class[coarse].append(number)
    rng = random.Random(SEED)
    return sorted(n for name, k in PER_CLASS.items() for n in rng.sample(sorted(by_class[name]), k))


if __name__ == "__main__":
    root = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[2] / "shared/doitpoms"
    )
    print(" ".join(str(number) for number in draw(root)))
