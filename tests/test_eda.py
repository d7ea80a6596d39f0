"""eda.py on the embedded sample, and notebook 02 executed with papermill."""

from __future__ import annotations

import json

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from microqa.data import dataset, sample, taxonomy
from microqa.report import eda, plots
from tests.conftest import MIRROR, REPO, needs_mirror
from tests.figure_checks import assert_readable

SAMPLE = REPO / "data" / "sample"
NOTEBOOK = REPO / "notebooks" / "02_eda_class_imbalance.ipynb"


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return dataset.with_image_metadata(dataset.load_records(SAMPLE))


def test_imbalance_summary_matches_the_counts(records):
    summary = eda.imbalance_summary(records).set_index("task")
    for task, (column, classes) in taxonomy.TASKS.items():
        # only the task's classes count ("Other" techniques and unlabelled records are excluded)
        labelled = records.loc[records[column].isin(classes), column]
        counts = labelled.value_counts()
        row = summary.loc[task]
        assert row["n_records"] == len(labelled)
        assert row["n_records"] + row["n_excluded"] == len(records)
        assert row["n_largest"] == counts.max() and row["n_smallest"] == counts.min()
        assert row["imbalance_ratio"] == pytest.approx(counts.max() / counts.min())
        # The baseline really is what a constant answer scores.
        assert row["majority_accuracy"] == pytest.approx((labelled == counts.idxmax()).mean())
        assert row["majority_balanced_accuracy"] == pytest.approx(1 / len(classes))
    notes = eda.imbalance_notes(eda.imbalance_summary(records))
    assert notes.count("\n") == len(taxonomy.TASKS) - 1 and "imbalance ratio" in notes


def test_class_counts_keep_every_class_and_the_excluded(records):
    counts = eda.class_counts(records, "technique_family", taxonomy.TECHNIQUE_FAMILIES)
    assert counts["class"].tolist()[:5] == list(taxonomy.TECHNIQUE_FAMILIES)
    assert "Other" in set(counts["class"])  # not a task class, but shown, not dropped
    assert counts["n"].sum() == len(records)
    cats = eda.class_counts(records, "primary_category", taxonomy.PRIMARY_CATEGORIES)
    assert cats.set_index("class").loc[eda.NONE, "n"] == records["primary_category"].isna().sum()


def test_category_cooccurrence_is_symmetric_with_tag_counts_on_the_diagonal(records):
    matrix = eda.category_cooccurrence(records)
    assert (matrix.values == matrix.values.T).all()
    tags = eda.category_label_counts(records).set_index("category")
    assert (np.diag(matrix.loc[tags.index, tags.index]) == tags["n"].to_numpy()).all()
    multi = records[records["category_set"].map(len) > 1].iloc[0]["category_set"]
    assert matrix.loc[multi[0], multi[1]] >= 1
    assert eda.multilabel_note(records).startswith(
        f"{(records['category_set'].map(len) > 1).sum()} of {len(records)}"
    )


def test_technique_by_category_counts_every_record(records):
    table = eda.technique_by_category(records)
    assert table.to_numpy().sum() == len(records)
    assert table.loc["AFM"].sum() == (records["technique_family"] == "AFM").sum()


def test_missing_fields_counts_empty_and_placeholder_values():
    df = pd.DataFrame(
        {c: ["x", "x", "x", "x"] for c in eda.TEXT_FIELDS}
        | {"technique_family": ["SEM", "SEM", "TEM", None]}
    )
    df.loc[0, "keywords"] = " "
    df.loc[1, "composition"] = "Not specified"
    df.loc[2, "keywords"] = "\xa0"
    table = eda.missing_fields(df)
    assert table.loc["keywords", "all"] == pytest.approx(0.5)
    assert table.loc["keywords", "SEM"] == pytest.approx(0.5)
    assert table.loc["keywords", "TEM"] == pytest.approx(1.0)
    assert table.loc["composition", "all"] == pytest.approx(0.25)
    assert table.loc["system", "all"] == 0
    assert list(table.columns) == ["all", "SEM", "TEM", eda.NONE]


def test_image_tables_describe_the_files(records):
    formats = eda.image_formats(records)
    assert formats["n"].sum() == len(records)
    sizes = eda.image_size_summary(records).set_index("format")
    assert sizes.loc["all", "max"] <= sample.SAMPLE_MAX_SIDE
    assert sizes.loc["all", "errors"] == 0
    people = eda.records_per(records, "contributor")
    assert people["n"].sum() == len(records)
    assert people["cumulative_share"].iloc[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "plot",
    [
        eda.plot_class_counts,
        eda.plot_technique_strings,
        eda.plot_category_cooccurrence,
        eda.plot_technique_by_category,
        eda.plot_image_properties,
        eda.plot_missing_fields,
        eda.plot_contributors,
    ],
)
def test_every_figure_is_stamped_and_reads_at_page_width(records, plot):
    with mpl.rc_context():
        plots.set_style()  # as the notebook draws it
        fig = plot(records, ["sample data"])
        titles = [fig._suptitle.get_text()] if fig._suptitle else []
        titles += [ax.get_title() for ax in fig.axes]
        assert any("[SAMPLE DATA]" in t for t in titles)
        assert_readable(fig)
    fig = plot(records, [])
    assert not any("SAMPLE" in ax.get_title() for ax in fig.axes)
    plt.close(fig)


# --- the notebook ----------------------------------------------------------------------------


def _outputs(path) -> str:
    import nbformat  # here, not at the top: only the notebook tests read notebooks

    nb = nbformat.read(path, as_version=4)
    return json.dumps([c.get("outputs", []) for c in nb.cells])


def _images_shown(path) -> int:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.notebooks
def test_notebook_02_on_the_sample(tmp_path, monkeypatch):
    """Notebook 02 alone, on a provenance record saying the run fell back to the sample."""
    import papermill

    from microqa import config, provenance

    env = {
        "MICROQA_BUILD": tmp_path / "build",
        "MICROQA_FIGURES": tmp_path / "figures",
        "MICROQA_TABLES": tmp_path / "tables",
        "MICROQA_DATA": tmp_path / "data",
        "MICROQA_PROFILE": "smoke",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    record = provenance.Record.load()
    what = "embedded sample data/sample instead of the library"
    provenance.substitute("data", what, "test", record)
    record.record_stage("data", source="sample", dataset_dir=str(config.sample_dir()))
    out = tmp_path / "02.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"profile": "smoke"},
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    text = _outputs(out)
    assert "OFFLINE SUBSTITUTES IN USE" in text
    shown = _images_shown(out)  # each saved figure displayed once (its alt text is metadata)
    assert shown == len(list((tmp_path / "figures").glob("eda_*.png"))) >= 7
    for name in ("technique_taxonomy", "category_taxonomy", "eda_imbalance_summary"):
        caption = (tmp_path / "tables" / f"{name}.md").read_text(encoding="utf-8")
        assert caption.splitlines()[0].endswith("[SAMPLE DATA]")
    taxonomy_csv = pd.read_csv(tmp_path / "tables" / "technique_taxonomy.csv")
    assert taxonomy_csv["n"].sum() == len(dataset.load_records(SAMPLE))
    assert provenance.Record.load().section("eda")["n_records"] == len(dataset.load_records(SAMPLE))


@pytest.mark.notebooks
@pytest.mark.skipif(
    not (REPO / "notebooks" / "01_scrape_doitpoms.ipynb").exists(),
    reason="notebook 01 (scraper branch) not merged yet",
)
def test_notebook_02_in_the_smoke_pipeline(smoke_pipeline):
    out = smoke_pipeline.run("02_eda_class_imbalance")
    text = _outputs(out)
    assert "image/png" in text and "imbalance ratio" in text
    figures = smoke_pipeline.root / "figures"
    assert (figures / "eda_class_sizes.png").stat().st_size > 10_000
    assert (smoke_pipeline.root / "tables" / "technique_taxonomy.md").exists()


@needs_mirror()
def test_a_technique_string_of_several_families_gets_a_bar_and_label_per_family():
    df = dataset.load_records(MIRROR)  # "Reflected light microscopy" maps to two families
    table = dataset.taxonomy_table(df)
    assert table["technique"].duplicated().any()
    fig = eda.plot_technique_strings(df)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(ticks) == len(set(ticks)) == len(table)
    assert "Reflected light microscopy  [Other]" in ticks
    assert_readable(fig)
