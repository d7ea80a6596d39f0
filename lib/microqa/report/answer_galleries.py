"""Galleries of what the methods answered: the most confident mistakes (notebooks 03, 04), open
descriptions (04), where methods disagree and what the cascade hands on (05).

Built on the gallery machinery of `report.galleries` (whole micrographs, captions with the record
id, truth, prediction and confidence, seeded picks, stamped titles).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from microqa import provenance
from microqa.clip import probes
from microqa.report.galleries import (
    Gallery,
    Tile,
    draw_tile,
    record_lines,
    seeded_pick,
    tile_figure,
)

# --- 03/04: most confident mistakes ----------------------------------------------------------


def predictions_from_probabilities(
    ids: Sequence[int], probabilities: np.ndarray, classes: Sequence[str], truth: Sequence
) -> pd.DataFrame:
    """micrograph_no, truth, prediction, confidence from a probability matrix (rows: images,
    columns: `classes`), as `confident_mistakes` reads it."""
    probabilities = np.asarray(probabilities, dtype=float)
    best = probabilities.argmax(axis=1)
    return pd.DataFrame(
        {
            "micrograph_no": [int(i) for i in ids],
            "truth": list(truth),
            "prediction": [classes[j] for j in best],
            "confidence": probabilities[np.arange(len(best)), best],
        }
    )


def predictions_from_scores(scores: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    """The same from a long score table (micrograph_no, class, probability; e.g. the CLIP
    stage's probe_scores.csv for one task), `truth` indexed by micrograph_no."""
    wide = scores.pivot_table(index="micrograph_no", columns="class", values="probability")
    wide = wide[wide.index.isin(truth.index)]
    return predictions_from_probabilities(
        wide.index, wide.to_numpy(), list(wide.columns), truth.loc[wide.index].tolist()
    )


def confident_mistakes(
    records: pd.DataFrame,
    predictions: pd.DataFrame,
    method: str,
    *,
    per_class: int = 3,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] = (),
) -> Gallery:
    """Per true class, the `per_class` wrong answers the method was most confident in.
    `predictions`: micrograph_no, truth, prediction, confidence (e.g. from
    `predictions_from_probabilities`); abstentions (prediction None) are not mistakes shown
    here. A class without mistakes gets an empty cell saying so."""
    table = records.set_index("micrograph_no")
    rows_in = predictions[predictions["micrograph_no"].isin(table.index)]
    wrong = rows_in[rows_in["prediction"].notna() & (rows_in["prediction"] != rows_in["truth"])]
    order = list(classes or sorted(rows_in["truth"].dropna().unique()))
    rows = []
    for cls in order:
        mine = wrong[wrong["truth"] == cls].sort_values(
            ["confidence", "micrograph_no"], ascending=[False, True]
        )
        row = [
            Tile(
                int(m.micrograph_no),
                table.loc[int(m.micrograph_no), "image_path"],
                [f"true: {cls}", f"said: {m.prediction}", f"confidence {m.confidence:.0%}"],
                correct=False,
            )
            for m in mine.head(per_class).itertuples()
        ]
        n_class = int((rows_in["truth"] == cls).sum())
        n_none = int((rows_in["truth"] == cls).mul(rows_in["prediction"].isna()).sum())
        silent = f", {n_none} no answer" if n_none else ""
        row = row or [Tile(empty=f"no mistakes\n(n={n_class}{silent})")]
        rows.append(row)
    n_wrong, n_all = len(wrong), len(rows_in)
    n_none = int(rows_in["prediction"].isna().sum())  # abstained: not wrong answers, say so
    unanswered = f", {n_none} no answer" if n_none else ""
    return tile_figure(
        rows,
        f"{method}: most confident mistakes per true class ({n_wrong} wrong{unanswered}, "
        f"of {n_all})",
        labels,
        row_labels=order,
    )


# --- 04: descriptions beside their image -----------------------------------------------------


def descriptions(
    records: pd.DataFrame,
    answers: pd.DataFrame,
    *,
    n: int = 4,
    seed: int = 0,
    labels: Sequence[str] = (),
    text_width: int = 78,  # characters; a line of wide letters ("mmm...") still fits
) -> Gallery:
    """Open-question answers beside their image and the expert's description.
    `answers`: micrograph_no, model, text (one row per model and image)."""
    table = records.set_index("micrograph_no")
    described = table.loc[table.index.intersection(answers["micrograph_no"].unique())]
    picked = seeded_pick(described.reset_index(), n, seed, by="technique_family")
    fig, axes = plt.subplots(
        len(picked) or 1,
        2,
        figsize=(13, 3.3 * max(1, len(picked))),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 3.2]},
    )
    for (image_ax, text_ax), row in zip(axes, picked.itertuples(), strict=False):
        draw_tile(image_ax, Tile(row.micrograph_no, row.image_path, record_lines(row)))
        said = answers[answers["micrograph_no"] == row.micrograph_no].sort_values("model")
        blocks = [f"EXPERT: {row.brief_description}"]
        if getattr(row, "keywords", ""):
            blocks.append(f"keywords: {row.keywords}")
        blocks += [f"{a.model}: {' '.join(str(a.text).split())}" for a in said.itertuples()]
        text = "\n\n".join(textwrap.fill(b, text_width, max_lines=6) for b in blocks)
        text_ax.axis("off")
        text_ax.text(0, 1, text, va="top", ha="left", fontsize=9, family="DejaVu Sans")
    if picked.empty:
        axes[0][0].axis("off")
        axes[0][1].axis("off")
        axes[0][1].text(0.5, 0.5, "no descriptions in this run", ha="center")
    title = f"Open question: what each model said, beside the expert ({len(picked)} images)"
    fig.suptitle(provenance.stamp(title, labels), weight="bold", fontsize=12)
    fig.tight_layout()
    return Gallery(fig, [int(i) for i in picked["micrograph_no"]])


# --- 05: where methods disagree, where the cascade asks the VLM ------------------------------


def disagreements(
    records: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    n: int = 8,
    seed: int = 0,
    labels: Sequence[str] = (),
    per_row: int = 4,
) -> Gallery:
    """Images where the methods do not all give the same answer, each captioned with the true
    label and every method's answer (✓/✗). `predictions`: micrograph_no, method, truth,
    prediction (None: abstained)."""
    answered = predictions.assign(prediction=predictions["prediction"].fillna("no answer"))
    distinct = answered.groupby("micrograph_no")["prediction"].nunique()
    split_ids = distinct[distinct > 1].index
    table = records.set_index("micrograph_no")
    pool = table.loc[table.index.intersection(split_ids)].reset_index()
    picked = seeded_pick(pool, n, seed, by="technique_family")
    tiles = []
    for row in picked.itertuples():
        mine = answered[answered["micrograph_no"] == row.micrograph_no].sort_values("method")
        truth = mine["truth"].iloc[0]
        lines = [f"true: {truth}"] + [
            f"{'✓' if a.prediction == truth else '✗'} {a.method}: {a.prediction}"
            for a in mine.itertuples()
        ]
        tiles.append(Tile(row.micrograph_no, row.image_path, lines))
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)] or [
        [Tile(empty="the methods agree on every image")]
    ]
    n_methods = predictions["method"].nunique()
    title = (
        f"Where {n_methods} methods disagree ({len(split_ids)} of "
        f"{predictions['micrograph_no'].nunique()} images; {len(picked)} shown)"
    )
    return tile_figure(rows, title, labels, caption_lines=2 + n_methods)


def cascade_handoffs(
    records: pd.DataFrame,
    cascade: pd.DataFrame,
    *,
    n: int = 8,
    seed: int = 0,
    labels: Sequence[str] = (),
    per_row: int = 4,
) -> Gallery:
    """Images the cascade sends to the VLM (CLIP not confident enough), with CLIP's answer and
    confidence, the VLM's answer, and whether the hand-off helped. `cascade`: micrograph_no,
    truth, clip_prediction, clip_confidence, vlm_prediction, sent (bool)."""
    sent = cascade[cascade["sent"].astype(bool)]
    table = records.set_index("micrograph_no")
    pool = table.loc[table.index.intersection(sent["micrograph_no"])].reset_index()
    picked = seeded_pick(pool, n, seed, by="technique_family")
    tiles = []
    for row in picked.itertuples():
        c = sent[sent["micrograph_no"] == row.micrograph_no].iloc[0]
        vlm = c["vlm_prediction"] if pd.notna(c["vlm_prediction"]) else "no answer"
        lines = [
            f"true: {c['truth']}",
            f"CLIP: {c['clip_prediction']} ({c['clip_confidence']:.2f})",
            f"→ VLM: {vlm}",
        ]
        tiles.append(Tile(row.micrograph_no, row.image_path, lines, correct=vlm == c["truth"]))
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)] or [
        [Tile(empty="the cascade sent no image to the VLM")]
    ]
    title = (
        f"Images the cascade hands to the VLM ({len(sent)} of {len(cascade)}; {len(picked)} shown)"
    )
    return tile_figure(rows, title, labels, caption_lines=3)


def embedding_galleries(features, probe_scores: pd.DataFrame, *, seed: int):
    """Notebook 03's two galleries of one feature set (`clip.embedding_space.FeatureSet`, the
    probe scores' own): seeded queries with their nearest neighbours among other specimens,
    and the logistic probe's most confident technique mistakes."""
    from microqa.report.galleries import retrieval_panels

    records = features.records
    neighbours = retrieval_panels(
        records,
        records["micrograph_no"],
        features.embeddings,
        labels=features.labels,
        features_name=features.source,
        seed=seed,
    )
    truth = records.set_index("micrograph_no")["technique_family"]
    main = probes.main_probe_scores(probe_scores, "technique")
    mistakes = confident_mistakes(
        records,
        predictions_from_scores(main, truth),
        f"Logistic probe on {features.source}",
        labels=features.labels,
    )
    return neighbours, mistakes
