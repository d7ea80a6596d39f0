"""The CLIP stage's outputs: its folder, file names, columns, and reading and writing them.

Every other module (the embedding space, the comparison, the VLM context) reads and writes
the stage's files through here; `directory` is the one place the folder is named.

    build/clip/
      zero_shot_scores.csv   SCORE_COLUMNS, one row per (image, model, task, prompt set, class)
      best_prompt_sets.csv   BEST_COLUMNS, the prompt set applied to each fold of specimens per
                             (model, task), chosen on the other fold (cross-fitting)
      probe_scores.csv       SCORE_COLUMNS, out-of-fold probe probabilities
      probe_table.csv        the probes' scores with intervals (probes.probe_table; the README's)
      timing.json            {model: {seconds_per_image, device, n}}
      features.npz / .json   micrograph_no + L2-normalised embeddings; {source, pretrained}
      failures.csv           FAILURE_COLUMNS, images that could not be embedded
      robustness_scores.csv  ROBUSTNESS_COLUMNS, zero-shot scores of the robustness sample under
                             each image variant (original included), each image with the prompt
                             set chosen for its fold on the other fold (`zero_shot.run_robustness`)
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import config, files

SCORE_COLUMNS = ["micrograph_no", "model", "weights", "task", "prompt_set", "class", "probability"]
BEST_COLUMNS = ["model", "task", "fold", "prompt_set"]  # fold: where the choice is applied
# the probes' rows in probe_scores.csv are named by their "prompt set"; the study's probe first
SCORE_PROMPT_SETS = {"logreg": "logreg-grouped-cv", "knn": "knn-grouped-cv"}
MAIN_PROBE = SCORE_PROMPT_SETS["logreg"]  # logistic, specimen-grouped CV
FAILURE_COLUMNS = ["micrograph_no", "image_file", "reason"]
# prompt_set: "cross-fitted"; chosen_prompt_set: the set applied to the image's fold
ROBUSTNESS_COLUMNS = [
    "micrograph_no",
    "model",
    "weights",
    "task",
    "variant",
    "prompt_set",
    "chosen_prompt_set",
    "class",
    "probability",
]
FILES = {
    "zero_shot": "zero_shot_scores.csv",
    "best": "best_prompt_sets.csv",
    "probe": "probe_scores.csv",
    "probe_table": "probe_table.csv",
    "timing": "timing.json",
    "features": "features.npz",
    "features_meta": "features.json",
    "failures": "failures.csv",
    "robustness": "robustness_scores.csv",
}


def directory() -> Path:
    """The CLIP stage's output folder."""
    return config.build_dir() / "clip"


def paths(folder: Path | str | None = None) -> dict[str, Path]:
    """{kind: path} of every output file, in `folder` (default: the stage's folder)."""
    folder = Path(folder) if folder is not None else directory()
    return {kind: folder / name for kind, name in FILES.items()}


def path(kind: str, folder: Path | str | None = None) -> Path:
    if kind not in FILES:
        raise ValueError(f"unknown CLIP output {kind!r}; choose one of {sorted(FILES)}")
    return paths(folder)[kind]


# --------------------------------------------------------------------------- writing


def write_zero_shot(scores: pd.DataFrame, best: pd.DataFrame, timing: dict) -> dict[str, Path]:
    """The downstream contract: zero_shot_scores.csv, best_prompt_sets.csv, timing.json."""
    return {
        "zero_shot": files.atomic_write_csv(path("zero_shot"), scores[SCORE_COLUMNS]),
        "best": files.atomic_write_csv(path("best"), best[BEST_COLUMNS]),
        "timing": files.atomic_write_text(path("timing"), json.dumps(timing, indent=2)),
    }


def write_robustness(scores: pd.DataFrame) -> Path:
    """robustness_scores.csv: the CLIP rows of the robustness and shortcut controls."""
    return files.atomic_write_csv(path("robustness"), scores[ROBUSTNESS_COLUMNS])


def write_probe_scores(frame: pd.DataFrame) -> Path:
    return files.atomic_write_csv(path("probe"), frame[SCORE_COLUMNS])


def write_probe_table(table: pd.DataFrame) -> Path:
    """The probe table as notebook 03 shows it, for the README's results (notebook 05)."""
    return files.atomic_write_csv(path("probe_table"), table, index=False)


def write_features(
    micrograph_no: np.ndarray, embeddings: np.ndarray, *, source: str, pretrained: bool
) -> dict[str, Path]:
    """features.npz + features.json: the image features the VLM stage uses for context."""
    buffer = io.BytesIO()
    np.savez(buffer, micrograph_no=np.asarray(micrograph_no), embeddings=embeddings)
    meta = json.dumps({"source": source, "pretrained": pretrained}, indent=2)
    return {
        "npz": files.atomic_write_bytes(path("features"), buffer.getvalue()),
        "json": files.atomic_write_text(path("features_meta"), meta),
    }


def write_failures(failures: pd.DataFrame, folder: Path | str | None = None) -> Path:
    """failures.csv (written even when empty, so a stale list never outlives a clean run)."""
    frame = failures if len(failures) else pd.DataFrame(columns=FAILURE_COLUMNS)
    return files.atomic_write_csv(path("failures", folder), frame[FAILURE_COLUMNS])


def failure_rows(image_paths: pd.Series, micrograph_no: pd.Series, reasons: dict) -> pd.DataFrame:
    """FAILURE_COLUMNS rows for `reasons` ({position: reason}); the image named relative to its
    dataset folder (`images/NNNNNN.ext`), never by a path of this machine."""
    rows = [
        (
            int(micrograph_no.iat[i]),
            f"{Path(image_paths.iat[i]).parent.name}/{Path(image_paths.iat[i]).name}",
            reason,
        )
        for i, reason in sorted(reasons.items())
    ]
    return pd.DataFrame(rows, columns=FAILURE_COLUMNS)


def announce_failures(rows: pd.DataFrame, named: set[int]) -> None:
    """Print each failed image once (`named`: the ids already printed in this run)."""
    for row in rows.itertuples():
        if row.micrograph_no not in named:
            named.add(row.micrograph_no)
            print(f"failed: {row.micrograph_no} {row.image_file}: {row.reason}", file=sys.stderr)


# --------------------------------------------------------------------------- reading


def read_scores(kind: str = "zero_shot", folder: Path | str | None = None) -> pd.DataFrame:
    """The stage's scores: kind "zero_shot" (zero_shot_scores.csv), "probe" or "robustness"."""
    if kind not in ("zero_shot", "probe", "robustness"):
        raise ValueError(
            f"unknown score kind {kind!r}; choose 'zero_shot', 'probe' or 'robustness'"
        )
    where = path(kind, folder)
    if not where.is_file():
        raise FileNotFoundError(f"{where} not found; run notebook 03 (make reproduce) first")
    return pd.read_csv(where)


def read_csv_or_empty(kind: str, folder: Path | str | None = None) -> pd.DataFrame:
    """A CSV output, or an empty frame when the stage did not write it."""
    where = path(kind, folder)
    return pd.read_csv(where, keep_default_na=True) if where.is_file() else pd.DataFrame()


def read_timing(folder: Path | str | None = None) -> dict:
    where = path("timing", folder)
    return json.loads(where.read_text(encoding="utf-8")) if where.is_file() else {}


def read_features(folder: Path | str | None = None) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(micrograph_no, embeddings, {source, pretrained}) or None when not written."""
    npz = path("features", folder)
    if not npz.is_file():
        return None
    meta_path = path("features_meta", folder)
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    with np.load(npz) as data:
        return data["micrograph_no"].astype(int), data["embeddings"], meta


def read_failures(folder: Path | str | None = None) -> pd.DataFrame:
    where = path("failures", folder)
    if not where.is_file():
        return pd.DataFrame(columns=FAILURE_COLUMNS)
    return pd.read_csv(where, dtype={"image_file": str, "reason": str}, keep_default_na=False)
