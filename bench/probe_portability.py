"""Same inputs, same probe numbers on another machine? (the README's "Between machines" claim)

Recomputes notebook 03's probe table (reference ViT-B/32 features labelled from the mirror's
records; logistic regression and 5-NN under three CV schemes, 10 fold seeds, 1000 bootstrap
resamples, seed 0) and compares it, number by number, with the committed
`tables/clip_probe.csv`: the largest difference per column, and whether every number agrees to
the precision the tables show (two decimals; three where the 95% interval is narrower than
0.02).

  export (here, beside ../shared):  .venv/bin/python bench/probe_portability.py export DIR
  check (any machine, on DIR):      python bench/probe_portability.py check DIR

`export` writes the exact inputs (labels, specimen and contributor ids, L2-normalised features)
so `check` needs neither the mirror's images nor ../shared. The check prints the machine's CPU
and numerical libraries next to the result.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))  # run from a checkout without installing

from microqa import config  # noqa: E402
from microqa.clip import embedding_space, probes  # noqa: E402
from microqa.data import taxonomy  # noqa: E402

COLUMNS = ("micrograph_no", "specimen_id", "contributor") + tuple(
    column for column, _ in taxonomy.TASKS.values()
)
KEYS = ["features", "task", "probe", "cv"]
SHOWN = 0.005  # half a unit in the second decimal: the precision the tables show


FULL = config.profile("full")  # the published run's settings


def export(directory: Path) -> None:
    profile = config.profile("full")
    records = embedding_space.reference_records(pd.DataFrame(), profile)
    features = embedding_space.reference_features(records)
    if features is None:
        raise SystemExit("reference features absent (../shared/reference)")
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": features.embeddings}
    for column in COLUMNS:
        values = features.records[column]
        arrays[column] = (
            values.to_numpy(np.int64)
            if column.endswith(("_no", "_id"))
            else (values.fillna("").astype(str).to_numpy("U"))
        )
    np.savez_compressed(directory / "probe_inputs.npz", **arrays)
    print(f"wrote {directory / 'probe_inputs.npz'}: {len(features.records)} records")


def machine() -> str:
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    )
    return (
        f"{cpu}; numpy {np.__version__}, scipy {scipy.__version__}, "
        f"scikit-learn {sklearn.__version__}, pandas {pd.__version__}; BLAS: {blas}"
    )


def check(directory: Path) -> int:
    with np.load(directory / "probe_inputs.npz") as data:
        records = pd.DataFrame({c: data[c] for c in COLUMNS})
        embeddings = data["embeddings"]
    features = embedding_space.FeatureSet(
        embedding_space.REFERENCE_SOURCE, True, records, embeddings
    )
    fresh = probes.probe_table(
        features,
        tasks=("technique", "category"),
        cv_seeds=range(FULL.cv_seeds),
        n_boot=FULL.n_boot,
        seed=FULL.seed,
    )
    committed = pd.read_csv(REPO / "tables" / "clip_probe.csv")
    committed = committed[committed["features"] == embedding_space.REFERENCE_SOURCE]
    both = committed.merge(fresh, on=KEYS, suffixes=("_committed", "_here"))
    if len(both) != len(committed) or len(both) != len(fresh):
        print(f"rows differ: committed {len(committed)}, here {len(fresh)}, matched {len(both)}")
        return 1
    numeric = [
        c
        for c in fresh.columns
        if c not in KEYS and pd.api.types.is_float_dtype(fresh[c]) and f"{c}_committed" in both
    ]
    print(f"machine: {machine()}")
    print(f"{len(both)} probe rows x {len(numeric)} numbers; largest |here - committed|:")
    worst = 0.0
    for column in numeric:
        diff = float((both[f"{column}_here"] - both[f"{column}_committed"]).abs().max())
        worst = max(worst, diff)
        print(f"  {column:<28}{diff:.2e}")
    rounded = all(
        (both[f"{c}_here"].round(2) == both[f"{c}_committed"].round(2)).all() for c in numeric
    )
    print(
        f"largest difference {worst:.2e}; every number equal at two decimals: {rounded}; "
        f"within half a shown unit ({SHOWN}): {worst < SHOWN}"
    )
    return 0 if worst < SHOWN else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("export", "check"))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.action == "export":
        export(args.directory)
        return 0
    return check(args.directory)


if __name__ == "__main__":
    sys.exit(main())
