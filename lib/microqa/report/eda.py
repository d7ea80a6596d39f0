"""Exploratory analysis for notebook 02: class imbalance, label co-occurrence, image properties,
missing fields and contributors. Every function returns a DataFrame or a figure; the notebook
only calls, displays and saves. Figure titles carry the offline-substitute labels it passes in.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from microqa import drawing, provenance
from microqa.data import dataset, taxonomy
from microqa.report import plots

NONE = "(none)"  # records a single-label task excludes (e.g. category "Device", technique Other)
# The record fields a reader of a micrograph would use, in the site's order.
TEXT_FIELDS = [
    c for c in dataset.RECORD_COLUMNS if c not in ("micrograph_no", "image_url", "page_url")
]


# Values that stand for "not given" (199 compositions read "Not specified").
PLACEHOLDERS = {"", "not specified", "none", "n/a", "unknown", "-"}


# --- class counts and imbalance --------------------------------------------------------------


def class_counts(df: pd.DataFrame, column: str, classes: Sequence[str]) -> pd.DataFrame:
    """Records and distinct specimens per class, in the task's class order; unlabelled last."""
    values = df[column].fillna(NONE)
    order = [*classes, *sorted(set(values) - set(classes))]
    table = pd.DataFrame(
        {
            "class": order,
            "n": [int((values == c).sum()) for c in order],
            "n_specimens": [df.loc[values == c, "specimen_group"].nunique() for c in order],
        }
    )
    table["share"] = table["n"] / max(1, len(df))
    return table


def imbalance_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation task: classes, largest/smallest class, imbalance ratio, trivial baselines.

    `majority_accuracy` is what always answering the largest class scores; its balanced
    accuracy is 1/k, which is why the study reports balanced accuracy next to accuracy.
    """
    rows = []
    for task, (column, classes) in taxonomy.TASKS.items():
        labelled = df.loc[df[column].isin(classes), column]  # "Other" techniques are not a class
        counts = labelled.value_counts().reindex(classes, fill_value=0)
        present = counts[counts > 0]
        rows.append(
            {
                "task": task,
                "n_records": len(labelled),
                "n_excluded": len(df) - len(labelled),
                "n_classes": len(classes),
                "largest_class": present.idxmax(),
                "n_largest": int(present.max()),
                "smallest_class": present.idxmin(),
                "n_smallest": int(present.min()),
                "imbalance_ratio": present.max() / present.min(),
                "classes_under_5pct": int((counts / max(1, len(labelled)) < 0.05).sum()),
                "majority_accuracy": present.max() / max(1, len(labelled)),
                "majority_balanced_accuracy": 1 / len(classes),
            }
        )
    return pd.DataFrame(rows)


def imbalance_notes(summary: pd.DataFrame) -> str:
    """Markdown sentences with this dataset's numbers, for the notebook's narrative."""
    lines = []
    for row in summary.itertuples():
        lines.append(
            f"- **{row.task}** ({row.n_records} labelled records, {row.n_excluded} excluded): "
            f"largest class *{row.largest_class}* ({row.n_largest}) vs smallest "
            f"*{row.smallest_class}* ({row.n_smallest}), imbalance ratio "
            f"**{row.imbalance_ratio:.1f}:1**. Always answering *{row.largest_class}* scores "
            f"{row.majority_accuracy:.0%} accuracy but only "
            f"{row.majority_balanced_accuracy:.0%} balanced accuracy."
        )
    return "\n".join(lines)


def plot_class_counts(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    """Three panels: technique family, coarse technique class, primary category."""
    panels = [
        ("Technique family", "technique_family", taxonomy.ALL_FAMILIES),
        ("Coarse technique class", "technique_coarse", taxonomy.COARSE_CLASSES),
        ("Primary category", "primary_category", taxonomy.PRIMARY_CATEGORIES),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (title, column, classes) in zip(axes, panels, strict=True):
        counts = class_counts(df, column, classes)
        sns.barplot(data=counts, y="class", x="n", ax=ax, color=sns.color_palette()[0])
        ax.bar_label(
            ax.containers[0],
            labels=[f"{n} ({s:.0%})" for n, s in zip(counts["n"], counts["share"], strict=True)],
            padding=3,
            fontsize=9,
        )
        ax.set_xscale("log")
        ax.set_xlim(0.8, counts["n"].max() * 6)
        ax.set(title=title, xlabel="records (log scale)", ylabel="")
    fig.suptitle(provenance.stamp(f"Class sizes ({len(df)} records)", labels), weight="bold")
    fig.tight_layout()
    return fig


def plot_technique_strings(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    """Every raw technique string, coloured by the family it maps to."""
    table = dataset.taxonomy_table(df).sort_values("n", ascending=False)
    # a string that maps to several families (by the record's other fields) gets one bar per
    # family, each labelled with it: two bars on one label would be drawn over each other
    shared = table["technique"].duplicated(keep=False)
    table["label"] = [
        drawing.wrap(t, 60) + (f"  [{f}]" if several else "")
        for t, f, several in zip(table["technique"], table["family"], shared, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(table) + 1.5))
    sns.barplot(
        data=table,
        y="label",
        x="n",
        hue="family",
        dodge=False,
        ax=ax,
        hue_order=[f for f in taxonomy.ALL_FAMILIES if f in set(table["family"])],
    )
    for container in ax.containers:
        ax.bar_label(container, padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(0.8, table["n"].max() * 3)
    ax.set(
        xlabel="records (log scale)",
        ylabel="",
        title=provenance.stamp("Raw technique strings and their family", labels),
    )
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(title="family", loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


# --- categories ------------------------------------------------------------------------------


def category_label_counts(df: pd.DataFrame) -> pd.DataFrame:
    """How often each category tag occurs (records carry several), and alone vs combined."""
    exploded = df[["category_set"]].explode("category_set").dropna()
    sizes = df["category_set"].map(len)
    rows = []
    for label, n in exploded["category_set"].value_counts().items():
        has = df["category_set"].map(lambda s, label=label: label in s)
        rows.append(
            {
                "category": label,
                "n": int(n),
                "share": n / len(df),
                "n_alone": int((has & (sizes == 1)).sum()),
            }
        )
    return pd.DataFrame(rows)


def multilabel_note(df: pd.DataFrame) -> str:
    """One Markdown sentence: how many records carry several category tags."""
    sizes = df["category_set"].map(len)
    multi = int((sizes > 1).sum())
    return (
        f"{multi} of {len(df)} records ({multi / max(1, len(df)):.0%}) carry more than one "
        f"category tag (up to {int(sizes.max())}); {int((sizes == 0).sum())} carry none."
    )


def category_cooccurrence(df: pd.DataFrame) -> pd.DataFrame:
    """Records carrying both tags (diagonal: records carrying the tag)."""
    tags = category_label_counts(df)["category"].tolist()
    matrix = pd.DataFrame(0, index=tags, columns=tags)
    for cats in df["category_set"]:
        for a in cats:
            for b in cats:
                matrix.loc[a, b] += 1
    return matrix


def plot_category_cooccurrence(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    matrix = category_cooccurrence(df)
    fig, ax = plt.subplots(figsize=(9.5, 8))
    plots.count_heatmap(matrix, ax, cmap="viridis_r", label="records with both tags")
    # one line per tag: a wrapped vertical label is wider than its column and hits the next
    plots.wrap_tick_labels(ax, axis="x", width=40, rotation=90)
    plots.wrap_tick_labels(ax, axis="y", width=24, rotation=0)
    ax.set_title(provenance.stamp("Category co-occurrence (records with both tags)", labels))
    fig.tight_layout()
    return fig


def technique_by_category(df: pd.DataFrame) -> pd.DataFrame:
    """Records per technique family × primary category (unlabelled shown as '(none)')."""
    table = pd.crosstab(df["technique_family"].fillna(NONE), df["primary_category"].fillna(NONE))
    rows = [f for f in (*taxonomy.ALL_FAMILIES, NONE) if f in table.index]
    cols = [c for c in (*taxonomy.PRIMARY_CATEGORIES, NONE) if c in table.columns]
    return table.loc[rows, cols]


def plot_technique_by_category(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    table = technique_by_category(df)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    plots.count_heatmap(table, ax, cmap="mako_r", label="records")
    plots.wrap_tick_labels(ax, axis="x", width=12, rotation=0)
    plots.wrap_tick_labels(ax, axis="y", width=22, rotation=0)
    ax.set(
        xlabel="primary category",
        ylabel="technique family",
        title=provenance.stamp("Technique family × primary category", labels),
    )
    fig.tight_layout()
    return fig


# --- images ----------------------------------------------------------------------------------


def image_formats(df: pd.DataFrame) -> pd.DataFrame:
    """Records per true file format and mode (df needs the image columns)."""
    table = df.groupby(["image_format", "image_mode"]).size().rename("n").reset_index()
    table["share"] = table["n"] / len(df)
    return table.sort_values("n", ascending=False).reset_index(drop=True)


def image_size_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Width, height and long side: min, quartiles, max, per format and overall."""
    sized = df.assign(long_side=df[["image_width", "image_height"]].max(axis=1).astype(float))
    rows = []
    for name, group in [("all", sized), *sized.groupby("image_format")]:
        stats = group["long_side"].describe()
        rows.append(
            {
                "format": name,
                "n": int(stats["count"]),
                "min": stats["min"],
                "q25": stats["25%"],
                "median": stats["50%"],
                "q75": stats["75%"],
                "max": stats["max"],
                "errors": int((group["image_error"].fillna("") != "").sum()),
            }
        )
    return pd.DataFrame(rows)


def plot_image_properties(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    """Long-side histogram by format, format × mode counts, width vs height."""
    sized = df.assign(
        long_side=df[["image_width", "image_height"]].max(axis=1).astype(float),
        kind=df["image_format"] + " " + df["image_mode"],
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sns.histplot(
        data=sized, x="long_side", hue="image_format", multiple="stack", bins=30, ax=axes[0]
    )
    axes[0].set(title="Long side", xlabel="pixels", ylabel="images")
    formats = image_formats(df).assign(kind=lambda t: t["image_format"] + " " + t["image_mode"])
    sns.barplot(data=formats, y="kind", x="n", ax=axes[1], color=sns.color_palette()[0])
    axes[1].bar_label(axes[1].containers[0], padding=3, fontsize=9)
    axes[1].set(title="True format and mode", xlabel="images", ylabel="")
    axes[1].set_xlim(0, formats["n"].max() * 1.2)
    sns.scatterplot(
        data=sized,
        x="image_width",
        y="image_height",
        hue="image_format",
        s=14,
        alpha=0.6,
        ax=axes[2],
        legend=False,
    )
    axes[2].set(title="Width × height", xlabel="width (px)", ylabel="height (px)")
    fig.suptitle(provenance.stamp(f"Images ({len(df)})", labels), weight="bold")
    fig.tight_layout()
    return fig


# --- missing fields and contributors ---------------------------------------------------------


def missing_fields(df: pd.DataFrame) -> pd.DataFrame:
    """Share of records with each text field empty or a placeholder ("Not specified"):
    overall and per technique family."""
    empty = df[TEXT_FIELDS].apply(
        lambda col: (
            col.fillna("").str.replace("\xa0", " ").str.strip().str.lower().isin(PLACEHOLDERS)
        )
    )
    family = df["technique_family"].fillna(NONE)
    table = empty.groupby(family).mean().T
    table = table[[f for f in (*taxonomy.ALL_FAMILIES, NONE) if f in table.columns]]
    table.insert(0, "all", empty.mean())
    table.index.name = "field"
    return table


def plot_missing_fields(df: pd.DataFrame, labels: Sequence[str] = ()) -> plt.Figure:
    table = missing_fields(df)
    counts = df["technique_family"].fillna(NONE).value_counts()
    table.columns = [
        f"{drawing.wrap(c, 12)}\n(n={len(df) if c == 'all' else counts[c]})" for c in table.columns
    ]
    fig, ax = plt.subplots(figsize=(11, 6))
    drawing.heatmap(
        table * 100,
        ax,
        fmt=".0f",
        cmap="rocket_r",
        vmin=0,
        vmax=100,
        colorbar_label="% of records without a value",
        linewidths=0.5,
        fontsize=8,
    )
    ax.set(
        xlabel="",
        ylabel="",
        title=provenance.stamp(
            "Missing fields (% empty or 'Not specified') by technique family", labels
        ),
    )
    ax.tick_params(axis="x", rotation=0, labelsize=8)
    fig.tight_layout()
    return fig


def records_per(df: pd.DataFrame, column: str, top: int | None = None) -> pd.DataFrame:
    """Records per contributor / organisation, largest first ('(not given)' for empty)."""
    values = df[column].fillna("").map(lambda v: " ".join(str(v).split()) or "(not given)")
    table = values.value_counts().rename_axis(column).rename("n").reset_index()
    table["share"] = table["n"] / len(df)
    table["cumulative_share"] = table["share"].cumsum()
    return table.head(top) if top else table


def plot_contributors(df: pd.DataFrame, labels: Sequence[str] = (), top: int = 12):
    """Records per contributor and per organisation (top `top`), names at reading size."""
    fig, axes = plt.subplots(2, 1, figsize=(11, 2 * (0.45 * top + 1.2)))
    for ax, column in zip(axes, ("contributor", "organisation"), strict=True):
        table = records_per(df, column, top).assign(
            label=lambda t, column=column: t[column].map(lambda v: drawing.wrap(v, 60))
        )
        sns.barplot(data=table, y="label", x="n", ax=ax, color=sns.color_palette()[1])
        ax.bar_label(
            ax.containers[0],
            labels=[f"{n} ({s:.0%})" for n, s in zip(table["n"], table["share"], strict=True)],
            padding=3,
            fontsize=10,
        )
        ax.set_xlim(0, table["n"].max() * 1.2)
        n_all = df[column].nunique()
        ax.set(
            title=f"Records per {column} (top {len(table)} of {n_all})", xlabel="records", ylabel=""
        )
        ax.tick_params(axis="y", labelsize=11)
    fig.suptitle(provenance.stamp("Who made the library", labels), weight="bold")
    fig.tight_layout()
    return fig
