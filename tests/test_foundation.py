"""Foundation: taxonomy, metrics, provenance, notebooks stored clean, Makefile dependencies."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from microqa import metrics, provenance, taxonomy
from tests.conftest import MIRROR, REPO, needs_mirror


@needs_mirror()
def test_every_mirror_technique_maps_to_a_family():
    with open(MIRROR / "records.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["technique"].strip()]
    strings = {r["technique"] for r in rows}
    assert len(strings) == 24
    for row in rows:
        categories = taxonomy.split_multi(row["categories"])
        family = taxonomy.technique_family(row["technique"], categories)
        assert family in taxonomy.ALL_FAMILIES, row["technique"]


def test_cross_polarised_is_decided_by_material():
    assert taxonomy.technique_family("Cross-polarised light microscopy", ["Metal or alloy"]) == (
        taxonomy.OPTICAL_REFLECTED
    )
    assert taxonomy.technique_family("Cross-polarised  light\xa0microscopy", ["Polymer"]) == (
        taxonomy.OPTICAL_TRANSMITTED
    )


@pytest.mark.parametrize(
    "text,family",
    [
        ("Scanning Electron Microscopy, backscattered", taxonomy.SEM),
        ("HRTEM lattice image", taxonomy.TEM),
        ("AFM tapping mode", taxonomy.AFM),
        ("Transmitted light, thin section", taxonomy.OPTICAL_TRANSMITTED),
        ("Optical micrograph, DIC", taxonomy.OPTICAL_REFLECTED),
    ],
)
def test_unseen_variants_follow_rules(text, family):
    assert taxonomy.technique_family(text) == family


def test_unmappable_technique_raises_naming_it():
    with pytest.raises(taxonomy.UnmappedLabelError, match="Raman spectroscopy"):
        taxonomy.technique_family("Raman spectroscopy")
    assert taxonomy.technique_family("  ") is None


def test_primary_category_rule():
    assert taxonomy.primary_category(["Fracture", "Metal or alloy"]) == taxonomy.METAL
    assert taxonomy.primary_category(["Ceramic", "Composite"]) == taxonomy.COMPOSITE
    assert (
        taxonomy.primary_category(["Foam", "Metal or alloy", "Metal or alloy composite foam"])
        == taxonomy.METAL
    )
    assert taxonomy.primary_category(["Ceramic", "Polymer"]) == taxonomy.CERAMIC
    assert taxonomy.primary_category(["Oxide"]) == taxonomy.CERAMIC
    assert taxonomy.primary_category(["Device"]) is None
    assert taxonomy.split_multi("Fracture,\xa0 Metal or alloy , Fracture") == [
        "Fracture",
        "Metal or alloy",
    ]


def test_metrics_agree_with_scikit_learn_on_random_inputs():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    y_true = rng.choice(classes, 300, p=[0.6, 0.2, 0.15, 0.05])
    y_pred = rng.choice(classes, 300)
    row = metrics.summarise(y_true, y_pred, n_boot=200)
    assert row["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert row["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert row["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
    scores = rng.random((300, 4))
    assert metrics.top_k_accuracy(y_true, scores, classes, 2) == pytest.approx(
        skm.top_k_accuracy_score(y_true, scores, k=2, labels=classes)
    )


def test_missing_answers_count_as_wrong_never_as_a_guess():
    y_true = ["a", "a", "b", "b"]
    row = metrics.summarise(y_true, ["a", None, "b", None], n_boot=50)
    assert row["accuracy"] == 0.5
    assert row["unanswered_rate"] == 0.5
    assert row["balanced_accuracy"] == 0.5


def test_mcnemar_detects_a_real_difference_only():
    a = [True] * 40 + [False] * 10
    assert metrics.mcnemar(a, a)["p_value"] == 1.0
    b = [False] * 30 + [True] * 10 + [False] * 10
    assert metrics.mcnemar(a, b)["p_value"] < 0.001


def test_substitutes_are_recorded_and_refused_under_strict(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROQA_BUILD", str(tmp_path))
    monkeypatch.delenv("STRICT", raising=False)
    provenance.record_stage("clip", models=["ViT-B-32:openai"])
    provenance.substitute("clip", "random weights for ViT-B-32", "no network")
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["clip"]["fallbacks"][0]["what"] == "random weights for ViT-B-32"
    assert "OFFLINE SUBSTITUTES" in provenance.banner()
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(provenance.StrictModeError, match="random weights"):
        provenance.substitute("clip", "random weights", "no network")


def test_source_notebooks_are_stored_without_outputs():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has stored outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one 'parameters' cell"


def test_notebook_dependencies_follow_imports():
    out = subprocess.run(
        [sys.executable, str(REPO / "lib/microqa/notebook_deps.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(rules) == {f"build/notebooks/{p.name}" for p in (REPO / "notebooks").glob("*.ipynb")}
    for deps in rules.values():
        assert "lib/microqa/config.py" in deps.split()
