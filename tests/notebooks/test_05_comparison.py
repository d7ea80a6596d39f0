"""Notebooks 01 -> 05 run by papermill (smoke profile): the comparison's schema, provenance."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from microqa import readme

pytestmark = pytest.mark.notebooks

REQUIRED = [
    "task",
    "subset",
    "label",
    "model",
    "context",
    "partner",
    "kind",
    "n",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "weights",
    "seconds_per_image",
    "provenance",
]


def test_pipeline_01_to_05_writes_the_comparison_with_provenance(smoke_pipeline):
    smoke_pipeline.run("05_comparison")
    tables = smoke_pipeline.root / "tables"
    table = pd.read_csv(tables / "comparison.csv")
    assert set(REQUIRED) <= set(table.columns)
    assert {"clip_zero_shot", "clip_probe", "vlm", "cascade", "fusion"} <= set(table["kind"])
    # every row carries where its numbers came from, and the offline run says so
    assert table["provenance"].str.contains("data: embedded sample").all()
    assert table["provenance"].str.contains("weights: ").all()
    assert (table.loc[table["kind"] == "vlm", "weights"] == "random").all()
    # one task's rows are measured on the same images, pooled over both folds
    assert table.groupby(["task", "subset"])["n"].nunique().eq(1).all()
    assert table["accuracy"].between(0, 1).all()
    choices = pd.read_csv(tables / "comparison_choices.csv")
    assert {"cascade", "fusion"} <= set(choices["kind"])
    assert set(choices["held_out_fold"]) == {0, 1}
    paired = pd.read_csv(tables / "comparison_paired_tests.csv")
    assert {"p_bootstrap_holm", "p_mcnemar_holm", "mdd_80"} <= set(paired.columns)
    record = json.loads((smoke_pipeline.root / "build" / "provenance.json").read_text())
    assert {"data", "clip", "vlm", "comparison"} <= set(record)
    assert {"data", "clip", "vlm"} <= {stage for stage in record if record[stage]["fallbacks"]}
    caption = (tables / "comparison.md").read_text().splitlines()[0]
    assert "RANDOM WEIGHTS" in caption and "SAMPLE DATA" in caption


def test_results_section_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme.START}\nold\n{readme.END}\noutro\n")
    readme.update_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{readme.START}\nnew table\n{readme.END}\noutro\n"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        readme.update_readme(readme, "x")
