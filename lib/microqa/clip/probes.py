"""Probes on image features: how much a little supervision gets out of the embedding space.

Every probe is scored under three cross-validation schemes: ungrouped (stratified folds),
grouped by specimen (records sharing a specimen key never straddle folds) and grouped by
contributor (a whole contributor's images held out: the closest stand-in for a new
collection). Each is repeated over the profile's `cv_seeds` fold seeds: mean and sd over
seeds, and the 95% CI of that mean (every bootstrap resample averages the seeds), resampling
the unit the row is grouped by: contributors for contributor-grouped rows, specimens otherwise.

Conditioning: features are standardised and the logistic regression is fitted with lbfgs to a
tight tolerance, so the fit reaches the same optimum on any BLAS (predictions no longer hinge
on where an unconverged solver stops). `reference_gap_table` keeps the reference README's own
setting (raw features, C=10) because its purpose is to reproduce those numbers.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from microqa import metrics, parallel, stats
from microqa.clip import outputs as clip_outputs
from microqa.data import taxonomy
from microqa.run import Run

PROBE_C = 1.0  # on standardised features
PROBE_TOL = 1e-8
REFERENCE_C = 10.0  # the reference README's setting (raw L2-normalised features)
CV_SCHEMES = {
    "stratified (ungrouped)": "stratified",
    "grouped by specimen": "grouped",
    "grouped by contributor": "contributor",
}
PROBE_NAMES = {
    "logreg": f"logreg (standardised, C={PROBE_C:g})",
    # Balanced accuracy is read first, so the probe is also trained for it: each class weighs
    # as much as the others. A variant reported beside the headline probe, not chosen over it
    # (choosing the better of the two on these folds would choose on the data it is scored on).
    "logreg-balanced": f"logreg (standardised, C={PROBE_C:g}, balanced class weights)",
    "knn": "5-NN",
}
REFERENCE_PROBE_NAME = f"logreg (raw features, C={REFERENCE_C:g})"  # the gap table's probe
SCORE_PROMPT_SETS, MAIN_PROBE = clip_outputs.SCORE_PROMPT_SETS, clip_outputs.MAIN_PROBE


def one_thread(fn):
    """The probes are small (hundreds x 512): multi-threaded BLAS only adds contention."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


def make_splitter(scheme: str, y: np.ndarray, groups: np.ndarray, *, seed: int, n_splits: int = 5):
    """Folds for a scheme: "stratified"; "grouped" and "contributor" (StratifiedGroupKFold over
    the groups passed: specimens or contributors stay whole); "group-kfold" (plain GroupKFold)."""
    smallest = int(pd.Series(y).value_counts().min())
    if scheme == "stratified":
        return StratifiedKFold(max(2, min(n_splits, smallest)), shuffle=True, random_state=seed)
    # no more folds than groups, nor than the largest class (StratifiedGroupKFold needs it)
    largest = int(pd.Series(y).value_counts().max())
    n = max(2, min(n_splits, len(np.unique(groups)), largest))
    if scheme in ("grouped", "contributor"):
        return StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    if scheme == "group-kfold":
        return GroupKFold(n)
    raise ValueError(f"unknown CV scheme {scheme!r}")


def classifier(method: str, *, k: int = 5, reference: bool = False):
    """A fresh probe. No seed: lbfgs is deterministic (random_state only drives sag/liblinear)."""
    if method == "logreg" and reference:
        return LogisticRegression(C=REFERENCE_C, max_iter=5000)
    if method in ("logreg", "logreg-balanced"):
        weights = "balanced" if method == "logreg-balanced" else None
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(C=PROBE_C, tol=PROBE_TOL, max_iter=20000, class_weight=weights),
        )
    if method == "knn":
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    raise ValueError(f"unknown probe {method!r}")


@one_thread
def out_of_fold(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    method: str,
    scheme: str,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    reference: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions and probabilities (columns in `classes` order, 0 for a class
    absent from a training fold). `groups`: specimens, or contributors for that scheme."""
    classes = list(classes if classes is not None else sorted(set(y)))
    proba = np.zeros((len(y), len(classes)))
    splitter = make_splitter(scheme, y, groups, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny classes: "least populated class" warnings
        for train, test in splitter.split(x, y, groups):
            k = min(5, len(train))
            model = classifier(method, k=k, reference=reference).fit(x[train], y[train])
            columns = [classes.index(c) for c in model.classes_]
            proba[np.ix_(test, columns)] = model.predict_proba(x[test])
    predicted = np.array([classes[i] for i in proba.argmax(axis=1)], dtype=object)
    return predicted, proba


def _cv_groups(features, task: str, scheme: str) -> np.ndarray | None:
    """The groups a scheme holds out together (None: the records name no contributor)."""
    _, _, specimens, _ = features.task(task)
    if scheme != "contributor":
        return specimens
    column, classes = taxonomy.TASKS[task]
    records = features.records[features.records[column].isin(classes)]
    if "contributor" not in records or (records["contributor"].astype(str) == "").all():
        return None
    return pd.factorize(records["contributor"].astype(str))[0]


def repeated_probe(x, y, groups, specimens, *, method, scheme, cv_seeds, classes, n_boot, seed):
    """One probe under one CV scheme, repeated over fold seeds: the seed-averaged scores with the
    interval of that average (one number, one source), resampling the unit the CV held out
    (contributors for the contributor scheme, else specimens)."""
    repeats = [
        out_of_fold(x, y, groups, method=method, scheme=scheme, seed=s, classes=classes)
        for s in cv_seeds
    ]
    clusters = groups if scheme == "contributor" else specimens
    summary = stats.summarise_repeats(
        y,
        [p for p, _ in repeats],
        clusters,
        scores=[s for _, s in repeats],
        classes=classes,
        n_boot=n_boot,
        seed=seed,
    )
    summary["n_specimens"] = int(pd.Series(specimens).nunique())
    summary["resampled"] = "contributors" if scheme == "contributor" else "specimens"
    return summary


def probe_table(
    features,
    *,
    tasks: Sequence[str] = ("technique",),
    cv_seeds: Sequence[int],
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """Logistic (plain and with balanced class weights) and k-NN probes under the three CV
    schemes, repeated over fold seeds (`repeated_probe`), one row each; the rows are computed
    in parallel (`microqa.parallel`)."""
    keys, pieces = [], []
    for task in tasks:
        x, y, specimens, _ = features.task(task)
        classes = taxonomy.TASKS[task][1]
        # the contributor scheme only where the records name contributors
        schemes = {
            name: (scheme, groups)
            for name, scheme in CV_SCHEMES.items()
            if (groups := _cv_groups(features, task, scheme)) is not None
        }
        for method in PROBE_NAMES:
            for cv_name, (scheme, groups) in schemes.items():
                keys.append({"task": task, "probe": PROBE_NAMES[method], "cv": cv_name})
                pieces.append(
                    functools.partial(
                        repeated_probe,
                        x,
                        y,
                        groups,
                        specimens,
                        method=method,
                        scheme=scheme,
                        cv_seeds=cv_seeds,
                        classes=classes,
                        n_boot=n_boot,
                        seed=seed,
                    )
                )
    rows = [
        {"features": features.source, **key, "cv_seeds": len(cv_seeds), **summary}
        for key, summary in zip(keys, parallel.run(pieces), strict=True)
    ]
    return pd.DataFrame(rows)


def probe_scores(features, *, seed: int) -> pd.DataFrame:
    """Contract file probe_scores.csv: out-of-fold probabilities of the specimen-grouped
    logistic and k-NN probes (the comparison's probe rows and its k-NN reference row)."""
    frames = []
    for task, (_, classes) in taxonomy.TASKS.items():
        x, y, groups, ids = features.task(task)
        if len(set(y)) < 2:
            continue
        for method, prompt_set in SCORE_PROMPT_SETS.items():
            _, proba = out_of_fold(
                x, y, groups, method=method, scheme="grouped", seed=seed, classes=classes
            )
            frames.append(
                pd.DataFrame(
                    {
                        "micrograph_no": np.repeat(ids, len(classes)),
                        "model": f"probe:{features.source}",
                        "weights": "pretrained" if features.pretrained else "random",
                        "task": task,
                        "prompt_set": prompt_set,
                        "class": np.tile(classes, len(ids)),
                        "probability": proba.ravel(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def write_probe_scores(frame: pd.DataFrame) -> Path:
    return clip_outputs.write_probe_scores(frame)


def main_probe_scores(scores: pd.DataFrame, task: str = "technique") -> pd.DataFrame:
    """The rows of `scores` (probe_scores' long table) of the study's probe on `task`."""
    return scores[(scores["task"] == task) & (scores["prompt_set"] == MAIN_PROBE)]


def probe_tables(feature_sets: Sequence, run: Run) -> pd.DataFrame:
    """`probe_table` over every feature set on both tasks, with the run's fold seeds, bootstrap
    size and seed; also kept in the CLIP stage's folder (the README's real numbers read it)."""
    frames = [
        probe_table(
            fs,
            tasks=("technique", "category"),
            cv_seeds=range(run.profile.cv_seeds),
            n_boot=run.n_boot,
            seed=run.seed,
        )
        for fs in feature_sets
    ]
    frames = [frame for frame in frames if not frame.empty]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    clip_outputs.write_probe_table(table)
    return table


@one_thread
def learning_curves(feature_sets, *, repeats: int, seed: int) -> pd.DataFrame:
    """`learning_curve` of every feature set, one table."""
    frames = [learning_curve(fs, repeats=repeats, seed=seed) for fs in feature_sets]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def learning_curve(
    features,
    *,
    task: str = "technique",
    labels_per_class: Sequence[int | str] = (1, 2, 4, 8, 16, "all"),
    repeats: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Grouped-CV logreg probe trained on only n labelled images per class (drawn from the
    training folds, seeded); 'all' uses every training image. Mean and spread over repeats."""
    x, y, groups, _ = features.task(task)
    classes = list(taxonomy.TASKS[task][1])
    rows = []
    for n in labels_per_class:
        for rep in range(repeats if n != "all" else 1):
            rng = np.random.default_rng(seed + rep)
            pred = np.empty(len(y), dtype=object)
            splitter = make_splitter("grouped", y, groups, seed=seed)
            for train, test in splitter.split(x, y, groups):
                if n != "all":
                    train = np.concatenate(
                        [rng.permutation(train[y[train] == c])[: int(n)] for c in classes]
                    )
                if len(set(y[train])) < 2:
                    pred[test] = y[train][0]
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = classifier("logreg").fit(x[train], y[train])
                pred[test] = model.predict(x[test])
            rows.append(
                {
                    "features": features.source,
                    "task": task,
                    "labels_per_class": str(n),
                    "repeat": rep,
                    "n": len(y),
                    "accuracy": metrics.accuracy(y, pred),
                    "balanced_accuracy": metrics.balanced_accuracy(y, pred),
                    "macro_f1": metrics.macro_f1(y, pred),
                }
            )
    raw = pd.DataFrame(rows)
    summary = raw.groupby(["features", "task", "labels_per_class"], sort=False).agg(
        n=("n", "first"),
        repeats=("repeat", "count"),
        accuracy=("accuracy", "mean"),
        accuracy_sd=("accuracy", "std"),
        balanced_accuracy=("balanced_accuracy", "mean"),
        balanced_accuracy_sd=("balanced_accuracy", "std"),
        macro_f1=("macro_f1", "mean"),
    )
    return summary.reset_index()


def reference_gap_table(features, *, n_boot: int, seeds: Sequence[int] = (0,)) -> pd.DataFrame:
    """Why the reference README's balanced accuracy differs from ours: the same logreg probe
    under label variants (plain cross-polarised records: per material as in our taxonomy, all
    reflected, all transmitted) and fold schemes. CIs: bootstrap by specimen within class."""
    records = features.records
    plain_xpol = records["technique"].map(taxonomy.normalise) == taxonomy.CROSS_POLARISED_AMBIGUOUS
    variants = {
        "ours (cross-polarised by material)": records["technique_family"],
        "cross-polarised all reflected": records["technique_family"].mask(
            plain_xpol, taxonomy.OPTICAL_REFLECTED
        ),
        "cross-polarised all transmitted": records["technique_family"].mask(
            plain_xpol, taxonomy.OPTICAL_TRANSMITTED
        ),
    }
    classes = taxonomy.TECHNIQUE_FAMILIES
    rows = []
    for label_name, labels in variants.items():
        mask = labels.isin(classes).to_numpy()
        x, y = features.embeddings[mask], labels[mask].to_numpy()
        groups = records.loc[mask, "specimen_id"].to_numpy()
        for scheme, cv_name in (
            ("stratified", "StratifiedKFold(5, shuffle)"),
            ("grouped", "StratifiedGroupKFold(5, shuffle)"),
            ("group-kfold", "GroupKFold(5)"),
        ):
            for seed in seeds if scheme != "group-kfold" else seeds[:1]:
                # predictions only: the classes absent from this label variant need no column
                pred, _ = out_of_fold(
                    x, y, groups, method="logreg", scheme=scheme, seed=seed, reference=True
                )
                row = stats.summarise(y, pred, groups, n_boot=n_boot, seed=seed)
                rows.append(
                    {
                        "features": features.source,
                        "probe": REFERENCE_PROBE_NAME,
                        "labels": label_name,
                        "cv": cv_name,
                        "seed": seed,
                        **row,
                    }
                )
    return pd.DataFrame(rows)


# The reference README's figures (5 families, logreg C=10), for side-by-side comparison.
REFERENCE_README = {
    "stratified": {"accuracy": 0.888, "balanced_accuracy": 0.709},
    "grouped": {"accuracy": 0.872, "balanced_accuracy": 0.628, "macro_f1": 0.698},
    "kmeans_k5": {"nmi": 0.207, "ari": 0.047},
}


def readme_comparison(gap: pd.DataFrame) -> pd.DataFrame:
    """Each gap-table row against the README number of its CV kind: inside our 95% CI or not."""
    rows = []
    for r in gap.itertuples():
        kind = "stratified" if r.cv.startswith("StratifiedKFold") else "grouped"
        for metric, value in REFERENCE_README[kind].items():
            low, high = getattr(r, f"{metric}_ci_low"), getattr(r, f"{metric}_ci_high")
            rows.append(
                {
                    "labels": r.labels,
                    "cv": r.cv,
                    "seed": r.seed,
                    "metric": metric,
                    "ours": getattr(r, metric),
                    "ci_low": low,
                    "ci_high": high,
                    "readme": value,
                    "readme_inside_ci": bool(low <= value <= high),
                }
            )
    return pd.DataFrame(rows)
