"""The README a newcomer reads in two minutes, and its generated findings (report.readme)."""

from __future__ import annotations

import re
import subprocess

import pandas as pd

from microqa.report import readme
from tests.conftest import REPO
from tests.test_site import _probe_table

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _committed() -> set[str]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return set(out.splitlines())


def test_the_readme_is_short_findings_first_and_links_only_committed_files():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "What we found", headings  # the findings before anything else
    assert {"The two commands", "What runs where", "Your own micrographs", "Layout"} <= set(
        headings
    )
    found = text.index("## What we found")
    assert found < text.index(readme.START) < text.index(readme.END)
    committed = _committed()
    folders = {str(p.parent) for p in map(__import__("pathlib").Path, committed)}
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:|^#", target):
            continue
        path = target.split("#")[0].rstrip("/")
        assert path in committed or path in folders, f"README links {target}, not committed"


def _comparison(tables, weights_of_vlm: str) -> None:
    base = {"task": "technique", "subset": "all labelled", "n": 836, "mode": "score"}
    rows = [
        {
            **base,
            "kind": "clip_probe",
            "model": "reference ViT-B/32 (pretrained)",
            "label": "CLIP logistic probe",
            "weights": "pretrained",
            "balanced_accuracy": 0.761,
            "balanced_accuracy_ci_low": 0.70,
            "balanced_accuracy_ci_high": 0.82,
        },
        {
            **base,
            "kind": "vlm",
            "model": "Qwen/Qwen3-VL-8B-Instruct",
            "label": "Qwen3-VL-8B-Instruct",
            "weights": weights_of_vlm,
            "balanced_accuracy": 0.0004,
            "balanced_accuracy_ci_low": 0.0,
            "balanced_accuracy_ci_high": 0.001,
        },
    ]
    pd.DataFrame(rows).to_csv(tables / "comparison.csv", index=False)


def test_the_findings_show_real_results_first_and_stamp_what_awaits_real_weights(tmp_path):
    _probe_table(tmp_path)
    _comparison(tmp_path, weights_of_vlm="random")
    text = readme.findings_markdown(tmp_path, "figures/findings.png")
    assert text.index("0.78 [0.70, 0.82] holding out specimens") < text.index("findings.png")
    assert "(n = 836 images, 383 specimens, 46 contributors; chance 0.20)" in text
    assert "| CLIP logistic probe | 0.76 [0.70, 0.82] (n=836)" in re.sub(r" +", " ", text)
    assert "0.000" not in text and "Qwen3-VL-8B-Instruct |" not in text  # random rows left out
    awaits = text[text.index("What awaits real weights") :]
    assert "[OFFLINE SUBSTITUTES]" in awaits and "`Qwen/Qwen3-VL-8B-Instruct`" in awaits
    assert "STRICT=1 make reproduce" in awaits and "--backend openai" in awaits


def test_with_real_weights_every_method_is_a_finding_and_nothing_is_stamped(tmp_path):
    _comparison(tmp_path, weights_of_vlm="pretrained")
    text = readme.findings_markdown(tmp_path)
    assert "0.000 [0.000, 0.001] (n=836)" in text  # a real model's number, however low
    assert "OFFLINE SUBSTITUTES" not in text and "had its real weights" in text
    assert "![" not in text  # no figure given


def test_missing_tables_give_no_sentence_and_no_number(tmp_path):
    text = readme.findings_markdown(tmp_path)
    assert "No result table of this run holds a finding yet" in text
    assert not re.search(r"\d\.\d\d", text) and "What awaits" not in text
    assert readme.findings_figure(tmp_path) is None
    _probe_table(tmp_path)
    assert readme.findings_figure(tmp_path) is not None


def test_a_baseline_that_cannot_vary_says_so_instead_of_a_zero_width_interval():
    def row(kind, label, value, low, high):
        return (
            {"kind": kind, "label": label, "weights": "none", "task": "technique"}
            | {"subset": "all labelled", "n": 839, "accuracy": value, "accuracy_ci_low": low}
            | {"accuracy_ci_high": high, "balanced_accuracy": 0.2}
        )

    table = pd.DataFrame(
        [
            row("chance", "chance", 0.2, 0.2, 0.2),
            row("majority", "majority", 0.689, 0.658, 0.719),
            row("clip_probe", "probe", 0.5, 0.5, 0.5),  # a method: its interval stays as it is
        ]
    )
    cells = readme.pivot(table, "accuracy").set_index("label")["technique"]
    assert cells["chance"] == "0.200, exact by construction (n=839)"
    assert cells["majority"] == "0.69 [0.66, 0.72] (n=839)"
    assert cells["probe"] == "0.500 [0.500, 0.500] (n=839)"
