"""From asked questions to answers: the one letter-scoring rule, rotations and abstention.

**One scoring rule** (both backends). A letter can be emitted as several single tokens ("A",
and " A" spelt "ĠA" or "▁A"); its log-probability is the logsumexp over those spellings (the
probability that the model commits to that letter in any spelling), CASE-SENSITIVE: a
lowercase "a" is the English article, not option A. The *letter mass* is the total
probability, over the whole vocabulary, of every spelling of every offered letter: how much
the model committed to answering with an option at all. `letter_scores` states the rule on a
list of (token text, log-probability) pairs, as an OpenAI-compatible server reports them; the
hf backend computes the same on its logits (tests feed both the same log-probabilities).

A server lists only its top tokens. A letter none of whose spellings is listed has, per
spelling, at most the smallest listed probability, and all absent letters together at most
the mass the list leaves over: it gets min(spellings x smallest listed, leftover / number of
absent letters), an upper-bound share, not zero and not a guess. With the whole vocabulary
listed the leftover is zero and the rule is exact. No letter listed at all: no answer.

**Every option order.** Each multiple-choice question is asked in every cyclic rotation of its
options (MMBench's CircularEval), so every class is shown under every letter once.
`decisions` turns the rows of `answers.csv` (one per question asked) into one decision per
(model, backend, weights, task, context, mode, prompt set, image):

- score mode: a class's probability is the mean over the answered rotations of the probability
  of the letter showing it; the letter mass is averaged likewise; the prediction is the most
  probable class, or *no answer* when the mean letter mass is below the abstention threshold;
- generate mode (no probabilities): the class the parser read in EVERY rotation, else no answer
  (CircularEval's consistency rule: a model that follows the letter instead of the content, or
  that was unreadable in any rotation, never gets the benefit of the doubt).

No answer counts as wrong. `fixed_order=True` keeps rotation 0 only (the taxonomy order): the
answers as a single fixed-order question would have given them.

**The abstention threshold** is chosen on the other fold of specimens (cross-fitting: each fold
is decided with a threshold chosen on the other one), per model, backend, weights, task,
context and prompt set. It maximises the class-balanced *effective reliability* (Whitehead et
al., "Reliable VQA: Abstain Rather Than Answer Incorrectly", ECCV 2022): +1 for a correct
answer, -`cost` for a wrong one, 0 for no answer, averaged within each true class and then over
classes. Accuracy alone would always choose never to abstain, since no answer counts as wrong.
Candidates are 0 (never abstain) and the fitting fold's own letter masses; ties keep the lower
threshold (abstain less).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DECISION_KEYS = [
    "model",
    "backend",
    "weights",
    "task",
    "context",
    "mode",
    "prompt_set",
    "micrograph_no",
]
THRESHOLD_GROUP = [k for k in DECISION_KEYS if k != "micrograph_no"]
DECISION_COLUMNS = [
    *DECISION_KEYS,
    "truth",
    "prediction",
    "choice",  # the answer before abstention (argmax or the consistent class)
    "probabilities",  # JSON, class name -> mean over rotations ('' in generate mode)
    "letter_mass",
    "n_rotations",  # rotations asked
    "n_answered",  # rotations that gave an answer (probabilities, or a parsed letter)
    "fold",
    "threshold",
    "abstained",  # the letter mass fell below the threshold
]


def letter_spellings(letter: str) -> tuple[str, str]:
    """The single-token texts that count as `letter`: the letter, and the letter after a
    space (the same spellings the hf backend looks up in its tokenizer). Case-sensitive."""
    return (letter, " " + letter)


@dataclass(frozen=True)
class LetterScores:
    probabilities: dict[str, float]  # renormalised over the letters; {} when none is listed
    log_probs: dict[str, float]  # per letter, over the whole vocabulary (absent: bound share)
    letter_mass: float  # total probability of every spelling of every letter


def letter_scores(top: Iterable[tuple[str, float]], letters: Sequence[str]) -> LetterScores:
    """THE scoring rule on (token text, log-probability) pairs (module doc).

    Raises ValueError on a log-probability that is not a number <= 0 (NaN, +inf, positive):
    a reply carrying one is malformed, and the caller records it as a failed answer."""
    top = [(str(token), float(logprob)) for token, logprob in top]
    bad = [(t, lp) for t, lp in top if math.isnan(lp) or lp > 1e-6]
    if bad:
        raise ValueError(f"invalid log-probabilities {bad[:3]}")
    owner = {spelling: letter for letter in letters for spelling in letter_spellings(letter)}
    per_spelling: dict[str, list[float]] = {letter: [] for letter in letters}
    for token, logprob in top:
        if token in owner:
            per_spelling[owner[token]].append(logprob)
    listed = {letter: lps for letter, lps in per_spelling.items() if lps}
    if not listed:
        return LetterScores({}, {}, 0.0)
    log_probs = {letter: float(np.logaddexp.reduce(lps)) for letter, lps in listed.items()}
    absent = [letter for letter in letters if letter not in listed]
    if absent:
        probs = [math.exp(lp) for _, lp in top]
        leftover = max(0.0, 1.0 - sum(probs))
        share = min(len(letter_spellings(absent[0])) * min(probs), leftover / len(absent))
        log_probs.update({letter: math.log(share) if share > 0 else -math.inf for letter in absent})
    letter_mass = float(np.logaddexp.reduce(list(log_probs.values())))
    probabilities = {letter: math.exp(log_probs[letter] - letter_mass) for letter in letters}
    return LetterScores(probabilities, log_probs, math.exp(letter_mass))


# --- rows of answers.csv -> decisions -----------------------------------------------------------


def with_contract_columns(answers: pd.DataFrame) -> pd.DataFrame:
    """answers.csv rows with `rotation` and `letter_mass` (files written before rotations
    existed hold rotation 0 only and no letter mass)."""
    df = answers.copy()
    if "rotation" not in df:
        df["rotation"] = 0
    if "letter_mass" not in df:
        df["letter_mass"] = np.nan
    df["rotation"] = pd.to_numeric(df["rotation"]).astype(int)
    df["letter_mass"] = pd.to_numeric(df["letter_mass"].replace("", np.nan), errors="coerce")
    return df


def _parse_probabilities(value) -> dict[str, float] | None:
    if isinstance(value, dict):
        return value or None
    if not isinstance(value, str) or not value.strip():
        return None
    parsed = json.loads(value)
    return parsed or None


def aggregate(answers: pd.DataFrame, *, fixed_order: bool = False) -> pd.DataFrame:
    """One row per decision key: the answer over rotations, before abstention (module doc)."""
    df = with_contract_columns(answers)
    if fixed_order:
        df = df[df["rotation"] == 0]
    rows = []
    for keys, group in df.groupby(DECISION_KEYS, sort=False):
        row = dict(zip(DECISION_KEYS, keys, strict=True))
        row["truth"] = group["truth"].iloc[0]
        row["n_rotations"] = len(group)
        if row["mode"] == "score":
            answered = [p for p in map(_parse_probabilities, group["probabilities"]) if p]
            classes = list(dict.fromkeys(c for p in answered for c in p))
            mean = {c: float(np.mean([p.get(c, 0.0) for p in answered])) for c in classes}
            row["probabilities"] = json.dumps(mean) if mean else ""
            row["choice"] = max(mean, key=mean.get) if mean else None
            masses = group["letter_mass"].dropna()
            row["letter_mass"] = float(masses.mean()) if len(masses) else np.nan
            row["n_answered"] = len(answered)
        else:
            chosen = [p if isinstance(p, str) and p else None for p in group["prediction"]]
            consistent = len(set(chosen)) == 1 and chosen[0] is not None
            row["probabilities"] = ""
            row["choice"] = chosen[0] if consistent else None
            row["letter_mass"] = np.nan
            row["n_answered"] = sum(c is not None for c in chosen)
        rows.append(row)
    columns = [c for c in DECISION_COLUMNS if c not in ("prediction", "fold", "threshold")]
    return pd.DataFrame(rows, columns=[c for c in columns if c != "abstained"])


def effective_reliability(
    truth: Sequence, prediction: Sequence, *, cost: float = 1.0, balanced: bool = True
) -> float:
    """+1 correct, -cost wrong, 0 no answer (None); averaged per true class, then over classes
    (`balanced`), or over all answers."""
    truth = np.asarray(truth, dtype=object)
    pred = np.asarray(prediction, dtype=object)
    answered = np.array([p is not None and p == p for p in pred], dtype=bool)
    score = np.where(answered, np.where(pred == truth, 1.0, -cost), 0.0)
    if not balanced:
        return float(score.mean()) if len(score) else np.nan
    return float(np.mean([score[truth == c].mean() for c in pd.unique(truth)]))


def choose_threshold(
    truth: Sequence, choice: Sequence, letter_mass: Sequence[float], *, cost: float = 1.0
) -> float:
    """The letter-mass threshold that maximises balanced effective reliability here."""
    mass = np.asarray(letter_mass, dtype=float)
    choice = np.asarray(choice, dtype=object)
    if not np.isfinite(mass).any():
        return 0.0
    best, best_score = 0.0, -np.inf
    for candidate in np.unique(np.concatenate([[0.0], mass[np.isfinite(mass)]])):
        kept = np.where(mass >= candidate, choice, None)
        score = effective_reliability(truth, kept, cost=cost)
        if score > best_score + 1e-12:
            best, best_score = float(candidate), score
    return best


def default_folds(records: pd.DataFrame) -> pd.Series:
    """Each image's fold of specimens (`dataset.selection_split`), indexed by micrograph_no."""
    from microqa.data import dataset

    split = dataset.selection_split(records)
    return pd.Series(split.to_numpy(), index=records["micrograph_no"].astype(int), name="fold")


def decisions(
    answers: pd.DataFrame,
    *,
    fold: pd.Series | None = None,
    records: pd.DataFrame | None = None,
    fixed_order: bool = False,
    abstain: bool = True,
    cost: float = 1.0,
) -> pd.DataFrame:
    """One decision per (model, backend, weights, task, context, mode, prompt set, image).

    `fold`: each image's fold of specimens, indexed by micrograph_no (default: `default_folds`
    of `records`). Score-mode decisions of each fold abstain below the threshold chosen on the
    other folds (`abstain=False`: never abstain, threshold 0). Columns: DECISION_COLUMNS."""
    decided = aggregate(answers, fixed_order=fixed_order)
    if fold is None:
        if records is None:
            raise ValueError("decisions needs the folds of specimens: pass fold= or records=")
        fold = default_folds(records)
    fold = pd.Series(fold)
    fold.index = fold.index.astype(int)
    missing = sorted(set(decided["micrograph_no"]) - set(fold.index))
    if missing:
        raise ValueError(
            f"{len(missing)} answered images have no fold (e.g. micrograph {missing[0]}); "
            "pass the folds of the dataset the answers came from"
        )
    decided["fold"] = decided["micrograph_no"].map(fold).to_numpy()
    decided["threshold"] = 0.0
    for _, group in decided.groupby(THRESHOLD_GROUP, sort=False):
        if group["mode"].iloc[0] != "score" or not abstain:
            continue
        for label in group["fold"].unique():
            fit = group[group["fold"] != label]
            threshold = (
                choose_threshold(fit["truth"], fit["choice"], fit["letter_mass"], cost=cost)
                if len(fit)
                else 0.0  # one fold only: nothing to choose on, so never abstain
            )
            decided.loc[group.index[group["fold"] == label], "threshold"] = threshold
    below = decided["letter_mass"].lt(decided["threshold"]) & decided["mode"].eq("score")
    decided["abstained"] = below.to_numpy()
    for column in ("choice", "prediction"):  # None, never NaN: "no answer" (as load_answers)
        source = decided["choice"].where(~below) if column == "prediction" else decided[column]
        decided[column] = source.astype(object).where(source.notna(), None)
    return decided[DECISION_COLUMNS]


def thresholds(decided: pd.DataFrame) -> pd.DataFrame:
    """The abstention threshold each fold was decided with (chosen on the other fold)."""
    score = decided[decided["mode"] == "score"]
    return (
        score.groupby([*THRESHOLD_GROUP, "fold"], sort=False)
        .agg(
            threshold=("threshold", "first"),
            n=("micrograph_no", "size"),
            abstained=("abstained", "sum"),
        )
        .reset_index()
    )
