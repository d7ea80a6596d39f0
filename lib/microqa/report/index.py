"""The report's front page (docs/index.html), findings first: the question, the data, the
methods in five lines, what we found (generated from the tables, with n and 95% intervals, and
one figure drawn from them), what awaits real weights (stamped, with the command), then the
pages of the notebooks.

Every number here is read from a table the notebooks wrote; a finding whose table is absent
is left out, never typed in. `page(entries, banners, tables, assets)` returns the HTML and the
image files it wrote; `findings(tables)` the findings as plain sentences (the README can use
the same). To add a finding: a function `(tables) -> Finding | None` appended to FINDINGS.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from microqa.clip.probes import PROBE_NAMES
from microqa.data import doitpoms, taxonomy
from microqa.report import plots

QUESTION = (
    "Can CLIP and vision-language models tell what a materials micrograph shows (the imaging "
    "technique, the class of material) and how far can their answers be trusted?"
)
METHODS = (
    "CLIP zero-shot: each class described by prompt sets, the set chosen on one fold of "
    "specimens and scored on the other.",
    "Probes on CLIP image features (logistic regression, 5-NN), cross-validated with whole "
    "specimens, or whole contributors, held out.",
    "Vision-language models asked multiple-choice questions with the options in every "
    "rotation, answers parsed strictly (a hedge is no answer).",
    "Hybrids: CLIP's shortlist or neighbours given to the VLM, and a cascade that asks the "
    "VLM only when CLIP is unsure.",
    "Balanced accuracy first; every number with n and a 95% interval resampling specimens "
    "within class strata.",
)
REAL_WEIGHTS_COMMAND = "make reproduce"


@dataclass
class Finding:
    sentence: str  # plain text, every number from a table
    table: str  # the table it reads, e.g. "clip_probe"
    figure: Callable[[], plt.Figure] | None = None


def _read(tables: Path, name: str) -> pd.DataFrame | None:
    path = tables / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _interval(row: pd.Series, metric: str = "balanced_accuracy", digits: int = 2) -> str:
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    return f"{row[metric]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _pretrained_logreg(probe: pd.DataFrame, method: str = "logreg") -> pd.DataFrame:
    real = probe[probe["features"].str.contains("pretrained", na=False)]
    return real[real["probe"] == PROBE_NAMES[method]]


def probe_finding(tables: Path) -> Finding | None:
    """The probes on pretrained features, holding out specimens and contributors."""
    probe = _read(tables, "clip_probe")
    if probe is None:
        return None
    rows = _pretrained_logreg(probe)
    rows = rows[rows["cv"].str.contains("grouped by", na=False)]
    if rows.empty:
        return None
    parts = []
    for task, group in rows.groupby("task", sort=False):
        held = "; ".join(
            f"{_interval(r)} holding out {r['cv'].removeprefix('grouped by ')}s"
            for _, r in group.iterrows()
        )
        units = ", ".join(f"{r['n_clusters']} {r['resampled']}" for _, r in group.iterrows())
        parts.append(
            f"{task}: balanced accuracy {held} (n = {group['n'].iloc[0]} images, {units}; "
            f"chance {taxonomy.chance(task):.2f})"
        )
    features = rows["features"].iloc[0]
    sentence = (
        f"A logistic probe on {features} image features names the micrograph's "
        + "; ".join(parts)
        + ". Each value is the mean over the fold seeds; its 95% interval resamples, within "
        "class, the unit the row holds out."
    )
    balanced = _pretrained_logreg(probe, "logreg-balanced")
    balanced = balanced[balanced["cv"] == "grouped by specimen"]
    if not balanced.empty:
        sentence += (
            " Trained with balanced class weights (a variant fixed in advance, not chosen on "
            "these scores), the same probe reaches "
            + "; ".join(f"{r['task']} {_interval(r)}" for _, r in balanced.iterrows())
            + " holding out specimens."
        )
    return Finding(sentence, "clip_probe", lambda: probe_figure(rows))


def reference_gap_finding(tables: Path) -> Finding | None:
    """How much the choice of labels and folds moves the probe on the reference features."""
    gap = _read(tables, "clip_reference_gap")
    if gap is None or gap.empty:
        return None
    low = gap.loc[gap["balanced_accuracy"].idxmin()]
    high = gap.loc[gap["balanced_accuracy"].idxmax()]
    probe = f"the earlier study's probe, {low['probe']}," if "probe" in gap else "a probe"
    sentence = (
        f"On the same features {probe} ranges from balanced accuracy {_interval(low)} "
        f"({low['labels']}, {low['cv']}) to {_interval(high)} ({high['labels']}, {high['cv']}) "
        f"across {len(gap)} label and fold variants, one fold seed each: how far labelling and "
        "fold choices alone move a number."
    )
    return Finding(sentence, "clip_reference_gap")


def _real_logistic(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the logistic probe on pretrained features (the study's real model offline;
    with real weights, the same rows still exist)."""
    real = table[(table["weights"] == "pretrained") & (table["kind"] == "clip_probe")]
    return real[real["prompt_set"].astype(str).str.startswith("logreg")]


def calibration_finding(tables: Path) -> Finding | None:
    """Whether the real probe's confidence means what it says, before and after the
    temperature fitted on the other fold."""
    table = _read(tables, "calibration")
    if table is None or table.empty or "ece_before" not in table:
        return None
    rows = _real_logistic(table)
    if rows.empty:
        return None
    parts = [
        f"{r['task']}: mean confidence {r['mean_confidence']:.2f} against accuracy "
        f"{r['accuracy']:.2f}, expected calibration error {_interval(r, 'ece_before')} before "
        f"and {_interval(r, 'ece_after')} after (change {_interval(r, 'ece_change', 3)})"
        for _, r in rows.iterrows()
    ]
    sentence = (
        "How far the probe's confidence can be taken at its word, before and after a "
        "temperature fitted on the other fold of specimens: "
        + "; ".join(parts)
        + " (equal-mass bins, 95% intervals by specimen)."
    )
    return Finding(sentence, "calibration")


def per_class_finding(tables: Path) -> Finding | None:
    """Where the real probe's balanced accuracy is lost: its weakest and strongest classes."""
    table = _read(tables, "per_class")
    if table is None or table.empty or "recall" not in table:
        return None
    rows = _real_logistic(table)
    if rows.empty:
        return None
    parts = []
    for task, group in rows.groupby("task", sort=False):
        ranked = group.sort_values("recall")
        low, high = ranked.iloc[0], ranked.iloc[-1]
        at_chance = ""
        if "chance_recall" in low and low["recall_ci_low"] <= low["chance_recall"]:
            at_chance = f", its interval reaching chance ({low['chance_recall']:.2f})"
        parts.append(
            f"{task}: recall {_interval(low, 'recall')} for {low['class']} (n = {low['n']}"
            f"{at_chance}) against {_interval(high, 'recall')} for {high['class']} "
            f"(n = {high['n']})"
        )
    sentence = "The imbalance is where it fails: " + "; ".join(parts) + "."
    return Finding(sentence, "per_class")


FINDINGS: list[Callable[[Path], Finding | None]] = [
    probe_finding,
    calibration_finding,
    per_class_finding,
    reference_gap_finding,
]


def findings(tables: Path) -> list[Finding]:
    return [f for f in (make(tables) for make in FINDINGS) if f is not None]


def probe_figure(rows: pd.DataFrame) -> plt.Figure:
    """Balanced accuracy with its 95% interval per task and held-out unit, sized for the page."""
    labels = [
        f"{r['task']}, {r['cv'].removeprefix('grouped by ')}s held out" for _, r in rows.iterrows()
    ]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.4))
    y = range(len(rows))
    mid = rows["balanced_accuracy"].to_numpy()
    err = [mid - rows["balanced_accuracy_ci_low"], rows["balanced_accuracy_ci_high"] - mid]
    ax.errorbar(mid, list(y), xerr=err, fmt="o", capsize=4, label="probe")
    for i, task in enumerate(rows["task"]):
        label = "chance (1 / classes)" if i == 0 else None
        ax.plot([taxonomy.chance(task)] * 2, [i - 0.3, i + 0.3], "--", color="0.4", label=label)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy (95% interval)")
    ax.set_title(f"Probe on {rows['features'].iloc[0]} features")
    fig.tight_layout()
    return fig


def awaits_real_weights(banners: list[str]) -> str:
    """The stamped paragraph: which substitutes this run used and the command for the real
    study (the substitutes' sentences come from provenance.banner, as each page shows them)."""
    lines = []
    for banner in banners:
        lines += [line[2:] for line in banner.splitlines() if line.startswith("- ")]
    lines = list(dict.fromkeys(lines))
    if not lines:
        return "<p>This run used real data and real weights throughout.</p>"
    items = "\n".join(f"<li>{_inline_markdown(line)}</li>" for line in lines)
    return (
        "<p><strong>[OFFLINE SUBSTITUTES]</strong> Every CLIP zero-shot and VLM number of this "
        "run comes from random-weight stand-ins, so it says nothing about the real models; "
        "the pages show them only to show the pipeline works. The substitutes:</p>\n"
        f"<ul>\n{items}\n</ul>\n"
        f"<p>With the weights available (a GPU with access to the model hub, or a served "
        f"model), <code>{REAL_WEIGHTS_COMMAND}</code> runs the real study; "
        "<code>STRICT=1</code> refuses any substitute.</p>"
    )


def _inline_markdown(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def data_sentence(tables: Path) -> str:
    source = _read(tables, "01_data_source")
    if source is None or source.empty:
        return f"Micrographs of the DoITPoMS Micrograph Library ({doitpoms.PUBLIC_LIBRARY})."
    row = source.iloc[0]
    served_by = str(row.get("served_by") or "")
    public = doitpoms.PUBLIC_LIBRARY
    origin = {"local mirror": "served by a local mirror of it", "the site": "scraped"}.get(
        served_by, str(row.get("source") or "")
    )
    return (
        f"{int(row['n_images'])} micrographs with their records ({int(row['n_records'])}) from "
        f'the DoITPoMS Micrograph Library (<a href="{public}">{public}</a>; '
        f"{origin}), labelled by imaging technique and material class."
    )


def page(
    entries: list[tuple[str, str]],
    banners: list[str],
    tables: Path,
    assets: Path,
    about: list[tuple[str, str]] = (),
) -> tuple[str, list[Path]]:
    """The index HTML and the image files it wrote under `assets`; `about` lists the written
    pages (name, title) of `report.pages`."""
    found = findings(tables)
    written = []
    figure_html = ""
    for finding in found:
        if finding.figure is None:
            continue
        fig = finding.figure()
        alt = plots.alt_text(fig)
        assets.mkdir(parents=True, exist_ok=True)
        path = assets / "findings.png"
        fig.savefig(path, dpi=plots.SAVE_DPI, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        written.append(path)
        figure_html = (
            f'<figure><img src="{assets.name}/{path.name}" alt="{html.escape(alt)}" '
            f'style="max-width:100%"><figcaption>From <code>tables/{finding.table}.csv'
            "</code>.</figcaption></figure>"
        )
        break
    found_html = (
        "\n".join(f"<li>{html.escape(f.sentence)}</li>" for f in found)
        or "<li>No result table of this run holds a finding yet.</li>"
    )
    methods = "\n".join(f"<li>{html.escape(m)}</li>" for m in METHODS)
    items = "\n".join(
        f'<li><a href="{name}.html">{html.escape(title)}</a></li>' for name, title in entries
    )
    about_html = ""
    if about:
        links = "\n".join(
            f'<li><a href="{name}.html">{html.escape(title)}</a></li>' for name, title in about
        )
        about_html = f"<h2>How the study works</h2>\n<ul>\n{links}\n</ul>"
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>microqa: what CLIP and VLMs see in micrographs</title>
<style>body{{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem;
line-height:1.5}} li{{margin:.3rem 0}} figure{{margin:1rem 0}}</style></head>
<body>
<h1>microqa: DoITPoMS micrographs with CLIP and vision-language models</h1>
<h2>The question</h2>
<p>{html.escape(QUESTION)}</p>
<h2>The data</h2>
<p>{data_sentence(tables)}</p>
<h2>Methods in five lines</h2>
<ol>
{methods}
</ol>
<h2 id="what-we-found">What we found</h2>
<ul>
{found_html}
</ul>
{figure_html}
<h2 id="what-awaits-real-weights">What awaits real weights</h2>
{awaits_real_weights(banners)}
<h2>The pages</h2>
<p>The executed notebooks, rendered without their code (it is in <code>notebooks/</code> and
<code>lib/microqa/</code>); each page starts with the provenance of its numbers.</p>
<ol>
{items}
</ol>
{about_html}
</body></html>
"""
    return text, written
