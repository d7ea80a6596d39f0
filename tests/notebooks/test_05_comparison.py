"""Notebooks 01 -> 05 run by papermill (smoke profile): the comparison's schema, provenance."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from microqa.report import readme

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
    # each method is scored on every labelled image it answered, pooled over both folds: the
    # VLMs and hybrids on the VLM's images (per mode: the other mode is asked of the agreement
    # subset only), CLIP zero-shot on all of the run's images
    answered = table[table["kind"].isin(["vlm", "cascade", "fusion"])]
    blank = answered["variant"] == "blank"  # the no-image baseline: the robustness sample
    assert answered[~blank].groupby(["task", "subset", "mode"])["n"].nunique().eq(1).all()
    assert answered.loc[blank, "label"].str.endswith("(blank image)").all()
    assert set(answered.loc[blank, "task"]) == {"technique", "category"}
    assert (answered.loc[blank, "n"] <= 8).all()
    zero_shot = table[table["kind"] == "clip_zero_shot"].set_index(["task", "subset"])["n"]
    most = answered.groupby(["task", "subset"])["n"].max()
    assert (zero_shot.loc[most.index] >= most).all()
    assert table["accuracy"].between(0, 1).all()
    choices = pd.read_csv(tables / "comparison_choices.csv")
    assert {"cascade", "fusion"} <= set(choices["kind"])
    assert set(choices["held_out_fold"]) == {0, 1}
    paired = pd.read_csv(tables / "paired_primary.csv")
    assert {"p_sign_flip_holm", "p_mcnemar_accuracy_holm", "mdd_80_corrected", "family"} <= set(
        paired.columns
    )
    for name in ("calibration", "selective", "per_class", "fold_counts", "paired_exploratory"):
        assert not pd.read_csv(tables / f"{name}.csv").empty, name
    calibration = pd.read_csv(tables / "calibration.csv")
    assert {"ece_before", "ece_after", "brier_before", "temperature_fold_0"} <= set(calibration)

    primary = paired[paired["family"] == "primary"]
    visual = primary[primary["question"] == "VLM with image vs blank image"]
    assert set(visual["b_variant"]) == {"blank"} and set(visual["a_variant"]) == {"original"}
    assert len(visual) == 4  # two VLMs x two tasks of the study's wording
    exploratory = pd.read_csv(tables / "paired_exploratory.csv")
    assert not exploratory["b_variant"].eq("blank").any()
    robust = pd.read_csv(tables / "robustness.csv")
    assert set(robust["variant"]) == {"hflip", "rot90", "gray", "masked"}
    assert set(robust["kind"]) == {"clip_zero_shot", "vlm"}
    assert robust["consistency"].between(0, 1).all() and robust["n"].le(8).all()
    gain = pd.read_csv(tables / "visual_gain.csv")
    assert len(gain) == 4 and set(gain["kind"]) == {"vlm"}
    assert "RANDOM WEIGHTS" in (tables / "robustness.md").read_text().splitlines()[0]
    assert (smoke_pipeline.root / "figures" / "robustness.png").stat().st_size > 10_000
    record = json.loads((smoke_pipeline.root / "build" / "provenance.json").read_text())
    assert {"data", "clip", "vlm", "comparison"} <= set(record)
    assert {"data", "clip", "vlm"} <= {stage for stage in record if record[stage]["fallbacks"]}
    caption = (tables / "comparison.md").read_text().splitlines()[0]
    assert "RANDOM WEIGHTS" in caption and "SAMPLE DATA" in caption


def test_results_section_replaces_only_between_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{readme.START}\nold\n{readme.END}\noutro\n")
    readme.update_readme(path, "new table\n")
    assert path.read_text() == f"intro\n{readme.START}\nnew table\n{readme.END}\noutro\n"
    path.write_text("no markers here\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        readme.update_readme(path, "x")


def test_shown_tables_are_compact_with_cis_and_no_inf():
    table = pd.DataFrame(
        {
            "task": ["technique", "technique", "category", "category"],
            "subset": [
                "all labelled",
                "all labelled",
                "all labelled",
                "without archaeological slags",
            ],
            "kind": ["vlm", "clip_zero_shot", "vlm", "vlm"],
            "label": ["Qwen", "CLIP zs", "Qwen", "Qwen"],
            "weights": ["random"] * 4,
            "n": [839, 839, 862, 818],
            "balanced_accuracy": [0.7123, 0.5, 0.6, 0.61],
            "balanced_accuracy_ci_low": [0.65, 0.499, 0.5, 0.5],
            "balanced_accuracy_ci_high": [0.77, 0.501, 0.7, 0.7],
        }
    )
    wide = readme.pivot(table)
    assert list(wide.columns) == [
        "label",
        "weights",
        "technique",
        "category",
        "category (without archaeological slags)",
    ]
    assert list(wide["label"]) == ["CLIP zs", "Qwen"]  # CLIP first, by kind
    qwen = wide.set_index("label").loc["Qwen"]
    assert qwen["technique"] == "0.71 [0.65, 0.77] (n=839)"  # two decimals: a wide interval
    assert wide.set_index("label").loc["CLIP zs", "technique"] == "0.500 [0.499, 0.501] (n=839)"
    paired = pd.DataFrame(
        {
            "task": ["technique", "technique"],
            "family": ["primary", "exploratory"],
            "question": ["q", "r"],
            "method_a": ["a", "a"],
            "method_b": ["b", "c"],
            "n": [839, 839],
            "n_specimens": [300, 300],
            "identical": [False, True],
            "balanced_accuracy_difference": [0.05, 0.0],
            "balanced_accuracy_ci_low": [-0.01, 0.0],
            "balanced_accuracy_ci_high": [0.11, 0.0],
            "p_sign_flip_holm": [0.0004, float("nan")],
            "p_mcnemar_accuracy_holm": [0.2, float("nan")],
            "mdd_80_corrected": [0.081, float("nan")],
        }
    )
    view = readme.paired_view(paired)
    assert view.iloc[0]["p (Δ balanced acc., specimen sign-flip, Holm)"] == "<0.001"
    assert view.iloc[1]["p (Δ balanced acc., specimen sign-flip, Holm)"] == "identical predictions"
    assert view.iloc[0]["p (accuracy, McNemar, Holm)"] == "0.200"
    assert view.iloc[0]["n (specimens)"] == "839 (300)"
    assert view.iloc[0]["Δ balanced acc. (a − b) [95% CI]"] == "0.05 [-0.01, 0.11]"
    assert "inf" not in view.to_string() and "inf" not in wide.to_string()
