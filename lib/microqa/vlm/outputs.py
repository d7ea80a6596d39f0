"""The VLM stage's outputs, in one place: paths, columns, writing and reading.

`build/vlm/answers.csv`: one row per question ASKED (every rotation of the options is a row);
`probabilities` is JSON keyed by class name, `permutation` the displayed class order 'A|B|...',
`rotation` the cyclic shift of the options, `letter_mass` the total probability the model put
on the option letters (empty in generate mode). `vlm/scoring.py` turns these rows into one
decision per image. `build/vlm/descriptions.csv`: the open question. `build/vlm/failures.csv`:
images that could not be decoded (micrograph_no, image_file, reason). Comparison and reports
read through `load_answers` / `load_descriptions`.

Both tables carry a `variant` column (the image variant each question showed, `data.variants`;
``original`` unless a run asked otherwise). A file written before the column existed is read as
all ``original`` and gains the column on the next write. The loaders return the original
images' rows by default, so no table mixes answers about different images; `variant=None`
returns every variant (the robustness tables).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from microqa import config
from microqa.data.variants import ORIGINAL
from microqa.files import atomic_write_csv

ANSWER_COLUMNS = [
    "micrograph_no",
    "model",
    "backend",
    "weights",
    "task",
    "context",
    "mode",
    "prompt_set",
    "rotation",
    "permutation",
    "truth",
    "prediction",
    "probabilities",
    "letter_mass",
    "latency_s",
    "visual_tokens",
    "raw_text",
    "cached",
    "variant",
]
DESCRIPTION_COLUMNS = [
    "micrograph_no",
    "model",
    "backend",
    "weights",
    "technique_truth",
    "category_truth",
    "technique_pred",
    "category_pred",
    "keyword_recall",
    "n_keywords",
    "latency_s",
    "visual_tokens",
    "raw_text",
    "cached",
    "variant",
]
FAILURE_COLUMNS = ["micrograph_no", "image_file", "reason"]


def output_dir() -> Path:
    return config.build_dir() / "vlm"


def answers_path() -> Path:
    return output_dir() / "answers.csv"


def descriptions_path() -> Path:
    return output_dir() / "descriptions.csv"


def failures_path() -> Path:
    return output_dir() / "failures.csv"


def default_cache_path() -> Path:
    """Kept under data/cache (not build/), so `make clean` does not throw answers away."""
    return config.cache_dir() / "vlm_answers.sqlite"


def _merge_write(df: pd.DataFrame, path: Path, columns: list[str], loader) -> Path:
    """Replace the rows of these (model, backend, variant) in `path`, keep the others; atomic.

    Every text field is quoted: raw model output can hold carriage returns, which an
    unquoted CSV field would turn into broken rows."""
    if path.is_file():
        old = loader(path, variant=None)
        ran = set(zip(df["model"], df["backend"], df["variant"], strict=True))
        runs = zip(old["model"], old["backend"], old["variant"], strict=True)
        keep = np.array([run not in ran for run in runs], dtype=bool)
        old = old.loc[keep]
        df = pd.concat([old[columns].astype(object), df[columns].astype(object)], ignore_index=True)
    return atomic_write_csv(
        path, df[columns].astype(object), index=False, quoting=csv.QUOTE_NONNUMERIC
    )


def save_answers(result, *, fresh: bool = False, failures: bool = True) -> tuple[Path, Path]:
    """Write answers.csv and descriptions.csv (`fresh`: replace them, else merge by model and
    variant), and failures.csv (this run's undecodable images; removed when there were none;
    `failures=False`: left as it is, for a run that adds variants to the main run's answers)."""
    paths = (answers_path(), descriptions_path())
    if fresh:
        for path in paths:
            path.unlink(missing_ok=True)
    _merge_write(result.answers, paths[0], ANSWER_COLUMNS, load_answers)
    _merge_write(result.descriptions, paths[1], DESCRIPTION_COLUMNS, load_descriptions)
    if failures:
        save_failures(result.failures)
    return paths


def save_failures(failures: Sequence[dict[str, Any]]) -> Path | None:
    path = failures_path()
    if not failures:
        path.unlink(missing_ok=True)
        return None
    frame = pd.DataFrame(list(failures), columns=FAILURE_COLUMNS).drop_duplicates()
    return atomic_write_csv(path, frame, index=False)


def load_answers(path: Path | str | None = None, *, variant: str | None = ORIGINAL) -> pd.DataFrame:
    """`build/vlm/answers.csv` as a DataFrame (prediction None where unanswered), the rows of
    image `variant` only (None: every variant)."""
    path = Path(path) if path else answers_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no VLM answers at {path}; run notebook 04 or `python -m microqa vlm`"
        )
    df = pd.read_csv(path, keep_default_na=False, dtype=str)
    df = _typed(
        df,
        numeric=("micrograph_no", "rotation", "letter_mass", "latency_s", "visual_tokens"),
        optional=("prediction",),
    )
    df["rotation"] = df["rotation"].astype(int)
    return _of_variant(df, variant)


def load_descriptions(
    path: Path | str | None = None, *, variant: str | None = ORIGINAL
) -> pd.DataFrame:
    """`build/vlm/descriptions.csv` (mapped predictions None where the text named none), the
    rows of image `variant` only (None: every variant)."""
    path = Path(path) if path else descriptions_path()
    if not path.is_file():
        raise FileNotFoundError(f"no VLM descriptions at {path}; run notebook 04")
    return _of_variant(
        _typed(
            pd.read_csv(path, keep_default_na=False, dtype=str),
            numeric=("micrograph_no", "keyword_recall", "n_keywords", "latency_s", "visual_tokens"),
            optional=("technique_pred", "category_pred", "technique_truth", "category_truth"),
        ),
        variant,
    )


def _of_variant(df: pd.DataFrame, variant: str | None) -> pd.DataFrame:
    """Rows of one image variant (a file from before variants: all original)."""
    if "variant" not in df.columns:
        df["variant"] = ORIGINAL
    df["variant"] = df["variant"].replace("", ORIGINAL)
    if variant is None:
        return df
    return df[df["variant"] == variant].reset_index(drop=True)


def _typed(df: pd.DataFrame, *, numeric: Sequence[str], optional: Sequence[str]) -> pd.DataFrame:
    for column in numeric:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="raise")
    for column in optional:
        df[column] = df[column].astype(object).where(df[column] != "", None)
    df["cached"] = df["cached"].str.lower() == "true"
    df["micrograph_no"] = df["micrograph_no"].astype(int)
    return df


def probability_matrix(answers: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """Rows of option probabilities in `classes` order (score mode), else None."""
    if answers.empty or (answers["probabilities"] == "").any():
        return None
    parsed = [json.loads(p) for p in answers["probabilities"]]
    return np.array([[p.get(c, 0.0) for c in classes] for p in parsed])
