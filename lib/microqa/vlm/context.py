"""CLIP as context for a VLM (the two-stage pipeline), as an ablation of prompt variants.

- `none`: the question alone.
- `clip_topk`: plus the CLIP stage's top-k zero-shot labels for the image, with their
  probabilities. The prompt set is a choice, so it is cross-fitted: an image's labels come
  from the set the CLIP stage chose for its fold of specimens on the OTHER fold's labels
  (`clip.prompt_choice`), never from a set chosen on its own label.
- `clip_neighbours`: plus (on top of the labels) the expert annotations, brief description and
  keywords, of the k nearest DoITPoMS images in CLIP image space. The image itself and every
  image of its specimen group (same brief description: near-duplicates) are excluded, so no
  annotation of the image under test can leak into its prompt.

Inputs, from the CLIP stage: `build/clip/zero_shot_scores.csv` (micrograph_no, model, weights,
task, prompt_set, class, probability), `build/clip/best_prompt_sets.csv` (model, task,
fold, prompt_set: the set applied to each fold), `build/clip/features.npz` (micrograph_no,
L2-normalised embeddings) and `build/clip/features.json` ({"source", "pretrained"}). A variant
whose inputs are missing is reported unavailable with the reason (the runner skips it), never
faked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from microqa.clip import outputs as clip_outputs
from microqa.clip import prompt_choice
from microqa.vlm import scoring

VARIANTS = ("none", "clip_topk", "clip_neighbours")


def clip_dir() -> Path:
    return clip_outputs.directory()


class ClipContext:
    """Renders the context variants for images of one dataset (`records`: the tidy table)."""

    # `folds`: each image's fold of specimens, indexed by micrograph_no (default: the study's,
    # `scoring.default_folds`); the labels of an image follow the choice made for its fold.
    def __init__(
        self,
        records: pd.DataFrame,
        *,
        directory: Path | str | None = None,
        clip_model: str | None = None,
        preferred: Sequence[str] = (),
        k_labels: int = 3,
        k_neighbours: int = 3,
        folds: pd.Series | None = None,
    ):
        self.directory = Path(directory) if directory else clip_dir()
        self.records = records.set_index("micrograph_no", drop=False)
        self.k_labels, self.k_neighbours = k_labels, k_neighbours
        self.reasons: dict[str, str] = {}  # variant -> why it is unavailable
        self.clip_model: str | None = None
        self.labels_weights: str | None = None
        self.features_source: dict = {}
        self.choices = pd.DataFrame()  # the per-fold prompt sets the labels come from
        self._labels: dict[tuple[int, str], list[tuple[str, float]]] = {}
        self._load_labels(clip_model, preferred, folds)
        self._load_features()

    # --- loading -----------------------------------------------------------------------------
    def _load_labels(
        self, clip_model: str | None, preferred_order: Sequence[str], folds: pd.Series | None
    ) -> None:
        scores_path = clip_outputs.path("zero_shot", self.directory)
        best_path = clip_outputs.path("best", self.directory)
        if not scores_path.is_file():
            self.reasons["clip_topk"] = f"no CLIP zero-shot scores at {scores_path}"
            return
        scores = pd.read_csv(scores_path)
        models = list(dict.fromkeys(scores["model"]))
        preferred = [m for m in preferred_order if m in models]  # the run's CLIP models first
        self.clip_model = clip_model or (preferred or models)[0]
        if self.clip_model not in models:
            self.reasons["clip_topk"] = f"CLIP model {self.clip_model!r} not in {scores_path}"
            return
        scores = scores[scores["model"] == self.clip_model]
        self.labels_weights = str(scores["weights"].iloc[0]) if len(scores) else None
        best = pd.read_csv(best_path) if best_path.is_file() else pd.DataFrame()
        if "fold" not in best:  # no choice recorded, or one made on a fixed half (leaky)
            self.reasons["clip_topk"] = (
                f"no per-fold prompt-set choices at {best_path} (the CLIP stage writes them "
                "cross-fitted); rerun notebook 03"
            )
            return
        fold_of = folds if folds is not None else scoring.default_folds(self.records)
        fold_of = pd.Series(fold_of).astype(str)
        fold_of.index = fold_of.index.astype(int)
        if not set(best["fold"].astype(str)) & set(fold_of):
            self.reasons["clip_topk"] = (
                f"the folds of {best_path} ({sorted(set(best['fold'].astype(str)))}) are not "
                f"the records' folds ({sorted(set(fold_of))})"
            )
            return
        self.choices = best[best["model"] == self.clip_model].reset_index(drop=True)
        applied = prompt_choice.apply_choices(scores, self.choices, fold_of)
        ranked = applied.sort_values(
            ["micrograph_no", "task", "probability"], ascending=[True, True, False], kind="stable"
        )
        for (mno, task), group in ranked.groupby(["micrograph_no", "task"], sort=False):
            self._labels[(int(mno), task)] = list(
                zip(group["class"], group["probability"].astype(float), strict=True)
            )

    def _load_features(self) -> None:
        features = clip_outputs.read_features(self.directory)
        if features is None:
            where = clip_outputs.path("features", self.directory)
            self.reasons["clip_neighbours"] = f"no CLIP image features at {where}"
            return
        numbers, embeddings, self.features_source = features
        keep = np.isin(numbers, self.records.index.to_numpy())
        self.numbers, self.embeddings = numbers[keep], embeddings[keep].astype(np.float32)
        self.row_of = {int(n): i for i, n in enumerate(self.numbers)}
        self.groups = self.records.loc[self.numbers, "specimen_group"].to_numpy()
        if "clip_topk" in self.reasons:  # neighbours come on top of the labels
            self.reasons["clip_neighbours"] = self.reasons["clip_topk"]

    # --- queries -----------------------------------------------------------------------------
    def available(self, variant: str) -> tuple[bool, str]:
        if variant not in VARIANTS:
            raise ValueError(f"unknown context variant {variant!r}; choose from {VARIANTS}")
        reason = self.reasons.get(variant)
        return reason is None, reason or ""

    def top_labels(self, micrograph_no: int, task: str) -> list[tuple[str, float]] | None:
        labels = self._labels.get((int(micrograph_no), task))
        return labels[: self.k_labels] if labels else None

    def neighbours(self, micrograph_no: int) -> pd.DataFrame | None:
        """The k most similar images of other specimens (cosine similarity of CLIP features)."""
        row = self.row_of.get(int(micrograph_no))
        if row is None:
            return None
        similarity = self.embeddings @ self.embeddings[row]
        group = self.records.loc[int(micrograph_no), "specimen_group"]
        similarity[self.groups == group] = -np.inf  # itself and its near-duplicates
        order = np.argsort(-similarity, kind="stable")[: self.k_neighbours]
        order = order[np.isfinite(similarity[order])]
        picked = self.records.loc[self.numbers[order]]
        return pd.DataFrame(
            {
                "micrograph_no": self.numbers[order],
                "similarity": similarity[order],
                "brief_description": picked["brief_description"].to_numpy(),
                "keywords": [", ".join(k) for k in picked["keyword_list"]],
                "specimen_group": picked["specimen_group"].to_numpy(),
            }
        )

    def render(self, variant: str, micrograph_no: int, task: str) -> str | None:
        """The context text for one image and task; None when this image lacks the inputs."""
        ok, reason = self.available(variant)
        if not ok:
            raise ValueError(f"context {variant!r} unavailable: {reason}")
        if variant == "none":
            return ""
        labels = self.top_labels(micrograph_no, task)
        if labels is None:
            return None
        listed = ", ".join(f"{name} ({p:.2f})" for name, p in labels)
        parts = [
            "Hint from a CLIP image classifier (zero-shot; it can be wrong): its top "
            f"{len(labels)} labels for this image are {listed}."
        ]
        if variant == "clip_neighbours":
            near = self.neighbours(micrograph_no)
            if near is None or near.empty:
                return None
            lines = [
                f"{i}. (similarity {r.similarity:.2f}) {r.brief_description}. "
                f"Keywords: {r.keywords or 'none'}."
                for i, r in enumerate(near.itertuples(), start=1)
            ]
            parts.append(
                "Expert annotations of the most similar images of other specimens in the "
                "DoITPoMS micrograph library (by CLIP image similarity):\n" + "\n".join(lines)
            )
        return "\n\n".join(parts)

    def labels_if_used(self, contexts: Sequence[str]) -> list[str]:
        """`substitute_labels` when some of `contexts` used CLIP, else none."""
        return self.substitute_labels() if any(c != "none" for c in contexts) else []

    def substitute_labels(self) -> list[str]:
        """Title labels when the context itself came from random CLIP weights."""
        random_labels = self.labels_weights not in (None, "pretrained")
        random_features = bool(self.features_source) and not self.features_source.get(
            "pretrained", False
        )
        return ["random CLIP weights in context"] if random_labels or random_features else []
