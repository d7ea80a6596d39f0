"""The README's findings, generated from tables/ by the pipeline (never typed by hand), and
the compact table views the notebooks show (`pivot`, `paired_view`, `probe_view`).

`findings_markdown(tables, figure)` is the text between the README's results markers: short,
findings first (the sentences of `report.index`, one figure, the real rows of the
comparison), then one stamped paragraph on what awaits real weights. The long tables stay in
`tables/` and the report. `update_readme` replaces the text between the markers."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from microqa import config, provenance
from microqa.compare.methods import in_main_mode
from microqa.report import index

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
BASELINE_KINDS = ("chance", "majority")


def _cell(row: pd.Series, metric: str) -> str:
    """'<metric> [95% CI] (n=...)'; a baseline whose value cannot vary (balanced accuracy of
    any constant guess is 1 / classes) says so instead of showing a zero-width interval."""
    n = f"(n={int(row['n'])})"
    if row.get("kind") in BASELINE_KINDS and row.get(f"{metric}_ci_low") == row.get(
        f"{metric}_ci_high"
    ):
        return f"{row[metric]:.3f}, exact by construction {n}"
    return f"{_ci(row, metric)} {n}"


def pivot(table: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Method x task (and subset): '<metric> [95% CI] (n=...)', the compact view a reader sees."""
    if table.empty:
        return pd.DataFrame()
    subset = table["subset"].map(lambda s: "" if s == "all labelled" else f" ({s})")
    table = table.assign(
        column=table["task"] + subset,
        cell=[_cell(r, metric) for _, r in table.iterrows()],
        order=table["kind"].map(lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 99),
    )
    wide = table.pivot_table(
        index=["order", "label", "weights"], columns="column", values="cell", aggfunc="first"
    )
    wide = wide.reindex(columns=list(dict.fromkeys(table["column"]))).fillna("")
    return wide.reset_index(level="order", drop=True).reset_index().rename_axis(columns=None)


def calibration_view(table: pd.DataFrame) -> pd.DataFrame:
    """Calibration, compact: per task and method, accuracy against mean confidence, ECE
    [95% CI] and Brier before and after the cross-fitted temperature (chance has no ECE)."""
    if table.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "task": table["task"],
            "method": table["label"],
            "weights": table["weights"],
            "n": table["n"],
            "accuracy": table["accuracy"].map(_fmt),
            "mean confidence": table["mean_confidence"].map(_fmt),
            "ECE before": [_ci(r, "ece_before") for _, r in table.iterrows()],
            "ECE after": [_ci(r, "ece_after") for _, r in table.iterrows()],
            "Brier before": [_ci(r, "brier_before") for _, r in table.iterrows()],
            "Brier after": [_ci(r, "brier_after") for _, r in table.iterrows()],
        }
    )


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


FIGURE_NAME = "findings"  # figures/findings.png: the README's one figure
SERVER_COMMAND = (
    ".venv/bin/python -m microqa vlm --backend openai --base-url http://HOST:8000/v1 \\\n"
    "    --model Qwen/Qwen3-VL-8B-Instruct --n all --context none,clip_topk,clip_neighbours"
)


def _read(tables: Path, name: str) -> pd.DataFrame | None:
    path = tables / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def findings_figure(tables: Path) -> plt.Figure | None:
    """The figure of the first finding that has one (`report.index`), or None."""
    return next((f.figure() for f in index.findings(tables) if f.figure is not None), None)


def real_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison's rows with real weights in the study's main answer mode: with every
    model offline, the probes on the reference features; with real weights, every method."""
    return comparison[(comparison["weights"] != "random") & in_main_mode(comparison["mode"])]


def random_models(comparison: pd.DataFrame) -> list[str]:
    """The models a run replaced by random-weight stand-ins, as the comparison names them."""
    rows = comparison[
        (comparison["weights"] == "random") & comparison["kind"].isin(("clip_zero_shot", "vlm"))
    ]
    return list(dict.fromkeys(rows["model"].dropna()))


def findings_markdown(tables: Path, figure: str | None = None) -> str:
    """The README's findings, short and generated from `tables` (a missing table: no
    sentence): the real results with n and 95% intervals (`report.index` states them), their
    figure (`figure`, a path relative to the README, when given), the real rows of the
    comparison, and what awaits real weights, stamped, with the commands that run it."""
    lines = [
        f"_Generated from `tables/` by `lib/microqa/report/readme.py` (notebook 05) at git "
        f"{provenance.git_sha()}; edit the code, not this section._",
        "",
    ]
    found = index.findings(tables)
    lines += [f"- {f.sentence} ([table](tables/{f.table}.md))" for f in found] or [
        "No result table of this run holds a finding yet."
    ]
    lines.append("")
    if figure:
        alt = "Balanced accuracy with its 95% interval of the probe on pretrained CLIP features"
        lines += [f"![{alt}]({figure})", ""]
    comparison = _read(tables, "comparison")
    if comparison is not None and not comparison.empty:
        real = real_rows(comparison)
        if not real.empty:
            lines += [
                "Every method with real weights, each labelled image scored once, balanced "
                "accuracy [95% CI] (n); accuracy, macro F1 and every other row: "
                "[tables/comparison.md](tables/comparison.md). (Its probe rows are one "
                "cross-validation, scored like every other method; the finding above is the "
                "mean over fold seeds.)",
                "",
                pivot(real).drop(columns="weights").to_markdown(index=False),
                "",
            ]
        lines += _awaits_real_weights(random_models(comparison))
    if (tables / "comparison_published.md").is_file():
        lines += [
            "The earlier study's published numbers (51 random images, no intervals, a "
            "different protocol): [tables/comparison_published.md]"
            "(tables/comparison_published.md).",
            "",
        ]
    return "\n".join(lines) + "\n"


def _awaits_real_weights(models: list[str]) -> list[str]:
    if not models:
        return ["Every model of this run had its real weights.", ""]
    named = ", ".join(f"`{m}`" for m in models)
    return [
        "### What awaits real weights",
        "",
        f"**[OFFLINE SUBSTITUTES]** This run had no pretrained weights for {named}: their "
        "rows come from random-weight stand-ins built locally, say nothing about the real "
        "models, and stay in `tables/` and the report, stamped. On a GPU with access to the "
        "model hub (or the models in its cache), or against a served model (vLLM, SGLang), "
        "the real study is:",
        "",
        "```bash",
        f"STRICT=1 {index.REAL_WEIGHTS_COMMAND}   # every notebook; a substitute is an error",
        f"{SERVER_COMMAND}",
        "```",
        "",
        "(a served model: then notebooks 04 and 05 with `-p backend openai -p base_url ...`, "
        "[docs_src/real_study.md](docs_src/real_study.md)).",
        "",
    ]


def readme_path() -> Path:
    return config.repo_root() / "README.md"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace the text between the results markers of the README (which must exist)."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {START} ... {END}")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{markdown}{END}", text), encoding="utf-8")
