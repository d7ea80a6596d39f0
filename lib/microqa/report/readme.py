"""The README's results section, generated from tables/ by the pipeline (never typed by hand)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from microqa import config, provenance
from microqa.compare.methods import in_main_mode

START, END = "<!-- results:start -->", "<!-- results:end -->"


def decimals(low: float, high: float) -> int:
    """Digits a figure supports: two when its 95% CI is at least 0.02 wide, else three."""
    return 2 if high - low >= 0.02 else 3


def with_ci(value: float, low: float, high: float) -> str:
    """'0.71 [0.65, 0.77]', at the precision the interval supports; '' when missing."""
    if value is None or pd.isna(value):
        return ""
    if low is None or pd.isna(low):
        return f"{value:.3f}"
    d = decimals(low, high)
    return f"{value:.{d}f} [{low:.{d}f}, {high:.{d}f}]"


def _ci(row: pd.Series, name: str) -> str:
    return with_ci(row.get(name), row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high"))


def _fmt(value, spec: str = ".3f") -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def p_value(p: float) -> str:
    return "" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


KIND_ORDER = ("clip_zero_shot", "clip_probe", "vlm", "cascade", "fusion")


def pivot(table: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Method x task (and subset): '<metric> [95% CI] (n=...)', the compact view a reader sees."""
    if table.empty:
        return pd.DataFrame()
    subset = table["subset"].map(lambda s: "" if s == "all labelled" else f" ({s})")
    table = table.assign(
        column=table["task"] + subset,
        cell=[f"{_ci(r, metric)} (n={int(r['n'])})" for _, r in table.iterrows()],
        order=table["kind"].map(lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 99),
    )
    wide = table.pivot_table(
        index=["order", "label", "weights"], columns="column", values="cell", aggfunc="first"
    )
    wide = wide.reindex(columns=list(dict.fromkeys(table["column"]))).fillna("")
    return wide.reset_index(level="order", drop=True).reset_index().rename_axis(columns=None)


def paired_view(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired tests, compact: Δ balanced accuracy [95% CI], its clustered sign-flip p
    (Holm within the row's family), the minimal detectable Δ at the family's corrected level,
    and McNemar's test of accuracy (images as independent). Identical pairs: no p-value."""
    if paired.empty:
        return pd.DataFrame()
    difference = [
        with_ci(
            r.balanced_accuracy_difference, r.balanced_accuracy_ci_low, r.balanced_accuracy_ci_high
        )
        for r in paired.itertuples()
    ]
    identical = paired["identical"].astype(bool)
    return pd.DataFrame(
        {
            "task": paired["task"],
            "family": paired["family"],
            "question": paired["question"],
            "a": paired["method_a"],
            "b": paired["method_b"],
            "n (specimens)": [f"{r.n} ({r.n_specimens})" for r in paired.itertuples()],
            "Δ balanced acc. (a − b) [95% CI]": difference,
            "p (Δ balanced acc., specimen sign-flip, Holm)": paired["p_sign_flip_holm"]
            .map(p_value)
            .where(~identical, "identical predictions"),
            "detectable Δ (80% power, Holm level)": paired["mdd_80_corrected"].map(
                lambda v: _fmt(v, ".2f")
            ),
            "p (accuracy, McNemar, Holm)": paired["p_mcnemar_accuracy_holm"].map(p_value),
        }
    )


def probe_view(probes: pd.DataFrame) -> pd.DataFrame:
    """Probe rows, compact: the mean over CV fold seeds with the 95% CI of that same mean
    (one number, one source), the sd over seeds, and the unit the interval resampled."""
    if probes.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "features": probes["features"],
            "task": probes["task"],
            "probe": probes["probe"],
            "cv": probes["cv"],
            "n": probes["n"],
            "balanced acc. (mean over seeds) [95% CI]": [
                _ci(r, "balanced_accuracy") for _, r in probes.iterrows()
            ],
            "sd over seeds": probes["balanced_accuracy_sd"].map(lambda v: _fmt(v, ".3f")),
            "accuracy [95% CI]": [_ci(r, "accuracy") for _, r in probes.iterrows()],
            "CI resamples": probes["resampled"],
        }
    )


def _markdown(frame: pd.DataFrame) -> list[str]:
    return [frame.to_markdown(index=False), ""] if not frame.empty else ["(none)", ""]


TRUST = (
    "**How far to trust each number.** Intervals resample whole specimens within classes, so "
    "near-duplicate images of one specimen count once. Probes are also scored holding out whole "
    "contributors: a contributor photographs a few materials in one style (one contributor's "
    "thin sections of archaeological slags are about half of the transmitted-light images), so "
    "the contributor-grouped "
    "probe is the better guide to a new collection, and the gap between the specimen- and "
    "contributor-grouped scores ([tables/clip_probe.md](tables/clip_probe.md)) is the part of "
    "the probe's skill that is recognising a contributor's style rather than the technique. "
    "Between machines: the probes standardise features and fit to a tight tolerance, so "
    "different BLAS kernels reach nearly the same optimum, but a prediction on a decision "
    "boundary can still flip. Measured: on a second machine (Intel Xeon, AVX-512 OpenBLAS, "
    "newer numpy/scipy, same scikit-learn) every number of the probe table moved by at most "
    "0.002 (`bench/probe_portability.py`), under half a unit of the two decimals shown, yet "
    "enough to change the last shown digit of a value that sits on a rounding boundary. "
    "Repeated-CV spreads (sd over fold seeds, about 0.01) are larger and are shown next to "
    "each probe."
)


def _real_feature_summary() -> list[str]:
    """The numbers that are real even offline: probes on pretrained reference features
    (tables/clip_probe.csv, written by notebook 03), on every labelled image."""
    path = config.tables_dir() / "clip_probe.csv"
    if not path.exists():
        return []
    probe = pd.read_csv(path)
    real = probe[
        probe["features"].str.contains("pretrained")
        & probe["cv"].str.startswith("grouped by")
        & probe["probe"].str.startswith("logreg")
    ]
    if real.empty:
        return []
    lines = [
        "**Real pretrained features** (logistic-regression probe, 5-fold CV holding out whole "
        "specimens or whole contributors, mean ± sd over fold seeds, all labelled images):",
        "",
    ]
    for _, row in real.iterrows():
        lines.append(
            f"- {row['task']}, {row['cv']}, {row['features']}: balanced accuracy "
            f"{_ci(row, 'balanced_accuracy')} (sd over seeds {row['balanced_accuracy_sd']:.3f}), "
            f"accuracy {_ci(row, 'accuracy')} (n = {row['n']})"
        )
    return lines + ["", "Full comparison, every labelled image scored once:", ""]


def _main_mode(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the study's main answer mode: CLIP rows and score-mode VLM rows. The
    generate-mode rows of the score/generate agreement subset stay in tables/comparison.*."""
    return table[in_main_mode(table["mode"])]


def _headline_pairs(paired: pd.DataFrame) -> pd.DataFrame:
    """The pairs the README shows: the primary family (`compare.family`), nothing else; the
    exploratory pairs are in tables/paired_exploratory.*."""
    if paired.empty:
        return paired
    return paired[paired["family"] == "primary"]


def _rotation_summary() -> list[str]:
    """What asking every option order changed (tables/vlm_rotation_effect.csv, written by
    notebook 04), without CLIP context; every context is in the linked table."""
    path = config.tables_dir() / "vlm_rotation_effect.csv"
    if not path.exists():
        return []
    from microqa.vlm import report as vlm_report  # matplotlib and seaborn, only when needed

    effect = pd.read_csv(path)
    return [
        vlm_report.rotation_readme_text(effect[effect["context"] == "none"]),
        "",
        "(every context: [tables/vlm_rotation_effect.md](tables/vlm_rotation_effect.md); "
        "letters chosen per position: "
        "[tables/vlm_position_bias.md](tables/vlm_position_bias.md))",
        "",
    ]


def results_markdown(
    table: pd.DataFrame, published: pd.DataFrame, paired: pd.DataFrame | None = None
) -> str:
    """Markdown: provenance statement, one table per task, the published numbers alongside."""
    record = provenance.load()
    substitutes = provenance.fallbacks()
    lines = [
        f"_Generated by `notebooks/05_comparison.ipynb` at git {provenance.git_sha()}; "
        "edit the notebooks, not this section._",
        "",
    ]
    if substitutes:
        lines += [
            "**⚠️ Rows marked `random` come from offline substitutes, not from the real "
            "study.** They show that the pipeline runs end to end and say nothing about "
            "zero-shot CLIP or the VLMs; rows marked `pretrained` are real. Substitutes used:",
            "",
            *[f"- {e['stage']}: {e['what']}" for e in substitutes],
            "",
            "(reasons and remedies: `build/provenance.json` and each notebook's banner)",
            "",
        ]
    else:
        lines += ["All numbers below come from real data and pretrained weights.", ""]
    data = record.get("data", {})
    source = data.get("source", "unknown")
    if source in ("scraped", "existing") and data.get("base_url"):
        origin = f"the DoITPoMS library, scraped from {data['base_url']}"
    else:
        origin = {"sample": "the embedded sample", "user": "a user dataset"}.get(source, source)
    lines += [
        f"Data: {origin} ({data.get('n_images', '?')} images). "
        "Every labelled image is evaluated once: the images are split into two folds of whole "
        "specimens; prompt sets, thresholds and weights are chosen on one fold and applied to "
        "the other, then the folds swap. Brackets: 95% CI, bootstrap by specimen within class.",
        "",
    ]
    lines += _real_feature_summary()
    lines += [
        "Balanced accuracy [95% CI] (n) per task (accuracy, macro F1, top-2 and cost per image: "
        "[tables/comparison.md](tables/comparison.md)):",
        "",
        *_markdown(pivot(_main_mode(table))),
    ]
    if paired is not None and not paired.empty:
        lines += [
            "The primary comparisons, stated before the results (`compare/family.py`), on the "
            "same images, Holm-corrected within this family only (every other pair: "
            "[tables/paired_exploratory.md](tables/paired_exploratory.md)):",
            "",
            *_markdown(
                paired_view(_headline_pairs(paired)).drop(
                    columns=["family", "p (accuracy, McNemar, Holm)"]
                )
            ),
        ]
    lines += _rotation_summary()
    lines += [TRUST, ""]
    lines += [
        "**Published by the earlier study** (different protocol; not comparable row by row):",
        "",
        "| method | task | accuracy | balanced acc. | macro F1 | top-2 | n | protocol |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in published.iterrows():
        lines.append(
            f"| {row['method']} | {row['task']} | {_fmt(row['accuracy'])} | "
            f"{_fmt(row['balanced_accuracy'])} | {_fmt(row['macro_f1'])} | "
            f"{_fmt(row['top2_accuracy'])} | {int(row['n'])} | {row['protocol']} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace the text between the results markers of the README (which must exist)."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {START} ... {END}")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{markdown}{END}", text), encoding="utf-8")
