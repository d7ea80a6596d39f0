"""What notebook 05 records of the comparison: its substitute labels and its provenance section."""

from __future__ import annotations

import pandas as pd

from microqa.compare.comparison import StudyComparison
from microqa.run import Run


def weight_labels(table: pd.DataFrame) -> list[str]:
    """'random weights' for titles when some method of the comparison ran with random weights."""
    return ["random weights"] if (table.get("weights", pd.Series()) == "random").any() else []


def record_provenance(run: Run, result: StudyComparison) -> dict:
    """The comparison stage's provenance section: images per task, the cross-fitting, the
    methods compared (the bootstrap size and seed are in the run's profile)."""
    table = result.table
    return run.record_stage(
        "comparison",
        n_images={t: int(g["n"].max()) for t, g in table.groupby("task")} if len(table) else {},
        cross_fitting="2 folds of specimens (splits.assign_folds)",
        n_boot=run.n_boot,
        seed=run.seed,
        methods=sorted(table["label"].unique()) if len(table) else [],
    )
