"""What the image embedding space holds, without text: UMAP, clusters, probes, retrieval.

Runs on the reference ViT-B/32 features in `<shared>/reference` when present (real
pretrained features, labelled from the mirror's records) and on the project's own
embeddings when real weights were used; otherwise on the own random-weight embeddings,
stamped as such. Every probe is reported twice: ungrouped (stratified folds) and grouped by
specimen (records sharing a brief description never straddle folds), which shows how much
near-duplicate images of one specimen inflate the ungrouped numbers.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from microqa import config, dataset, metrics, provenance, taxonomy
from microqa.clip import outputs as clip_outputs

REFERENCE_FILE = "clip_vit_b32_openai_image_embeddings.npz"
# The probes are small (hundreds x 512): multi-threaded BLAS only adds contention; on a busy
# 2-core machine one logistic-regression fit took 1.7 s with 2 threads and 0.05 s with 1.


def _one_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


REFERENCE_SOURCE = "reference ViT-B/32 (pretrained)"
PROBE_C = 10.0  # the reference README's logistic-regression setting
CV_SCHEMES = {
    "stratified (ungrouped)": "stratified",
    "grouped by specimen": "grouped",
}


@dataclass
class FeatureSet:
    """Image features with their records (labels, specimen groups), aligned row by row."""

    source: str  # e.g. "reference ViT-B/32 (pretrained)" or "ViT-B-32:openai (random weights)"
    pretrained: bool
    records: pd.DataFrame
    embeddings: np.ndarray  # (n, d), L2-normalised

    @property
    def labels(self) -> list[str]:
        """Substitute labels for titles ('random weights', 'sample data')."""
        out = [] if self.pretrained else ["random weights"]
        if self.records.attrs.get("sample_data"):
            out.append("sample data")
        return out

    def task(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, groups, micrograph_no) of the rows whose label for `task` is defined."""
        column, classes = taxonomy.TASKS[task]
        mask = self.records[column].isin(classes).to_numpy()
        return (
            self.embeddings[mask],
            self.records.loc[mask, column].to_numpy(object),
            self.records.loc[mask, "specimen_id"].to_numpy(),
            self.records.loc[mask, "micrograph_no"].to_numpy(),
        )


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_features(
    records: pd.DataFrame, reference_dir: Path | None = None
) -> FeatureSet | None:
    """The reference features joined to `records` on micrograph_no; None when absent."""
    path = (reference_dir or config.shared_dir() / "reference") / REFERENCE_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        ids, emb = data["micrograph_no"].astype(int), data["embeddings"]
    position = {m: i for i, m in enumerate(ids)}
    rows = records[records["micrograph_no"].isin(position)].reset_index(drop=True)
    rows.attrs = dict(records.attrs)
    return FeatureSet(
        REFERENCE_SOURCE, True, rows, _normalise(emb[[position[m] for m in rows["micrograph_no"]]])
    )


def reference_records(active: pd.DataFrame, profile: config.Profile) -> pd.DataFrame:
    """Labels for the reference features: the mirror's records when present, else the active
    dataset's (reference ids outside it then drop out). Trimmed to the profile's size."""
    mirror = config.shared_dir() / "doitpoms"
    if (mirror / "records.csv").is_file():
        records = dataset.load_records(mirror)
    else:
        records = active.copy()
        records.attrs["sample_data"] = bool(dataset.data_substitutes())
    return dataset.limit_for_profile(records, profile)


def own_features(run, df: pd.DataFrame) -> list[FeatureSet]:
    """The project's own embeddings, one FeatureSet per model that ran (pretrained first)."""
    sets = []
    for model in run.run_models:
        ids, emb = run.embeddings[model]
        records = df.set_index("micrograph_no").loc[ids].reset_index()
        records.attrs["sample_data"] = bool(dataset.data_substitutes())
        weights = run.weights(model)
        sets.append(
            FeatureSet(
                f"{model} ({'pretrained' if weights == 'pretrained' else 'random weights'})",
                weights == "pretrained",
                records,
                _normalise(emb),
            )
        )
    return sorted(sets, key=lambda s: not s.pretrained)


def analysis_sets(run, df: pd.DataFrame, profile: config.Profile) -> list[FeatureSet]:
    """Reference features (when present) + own pretrained embeddings; else own random ones."""
    sets = []
    reference = reference_features(reference_records(df, profile))
    if reference is not None and len(reference.records):
        sets.append(reference)
    own = own_features(run, df)
    sets += [s for s in own if s.pretrained]
    if not sets:
        sets += own[:1]
    return sets


def write_features(features: FeatureSet) -> dict[str, Path]:
    """build/clip/features.npz + features.json: the features the VLM stage uses for context."""
    return clip_outputs.write_features(
        features.records["micrograph_no"].to_numpy(),
        features.embeddings,
        source=features.source,
        pretrained=features.pretrained,
    )


# --------------------------------------------------------------------------- UMAP


def umap_2d(x: np.ndarray, *, random_state: int = 0, n_neighbors: int = 15) -> np.ndarray:
    import umap

    n_neighbors = max(2, min(n_neighbors, len(x) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": intended
        reducer = umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=random_state)
        return reducer.fit_transform(x)


def umap_figure(features: FeatureSet, coords: np.ndarray, *, random_state: int = 0):
    """Two panels: the same map coloured by technique family and by primary category."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, (column, title) in zip(
        axes,
        [("technique_family", "technique family"), ("primary_category", "material category")],
        strict=True,
    ):
        hue = features.records[column].fillna("(none)").to_numpy()
        sns.scatterplot(
            x=coords[:, 0],
            y=coords[:, 1],
            hue=hue,
            s=14,
            linewidth=0,
            ax=ax,
            hue_order=sorted(set(hue)),
        )
        ax.set_title(f"coloured by {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, markerscale=1.5, loc="best")
    fig.suptitle(
        provenance.stamp(
            f"UMAP of {features.source} image features (n={len(coords)}, cosine, "
            f"random_state={random_state})",
            features.labels,
        )
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- clusters


@_one_thread
def cluster_table(
    features: FeatureSet, *, n_clusters: Sequence[int] = (5,), seed: int = 0
) -> pd.DataFrame:
    """k-means and agglomerative (Ward) clusters against the labels: NMI and ARI."""
    rows = []
    for task in ("technique", "category"):
        x, y, _, _ = features.task(task)
        for k in n_clusters:
            if len(x) <= k:
                continue
            methods = {
                "k-means": KMeans(n_clusters=k, n_init=10, random_state=seed),
                "agglomerative (Ward)": AgglomerativeClustering(n_clusters=k),
            }
            for method, model in methods.items():
                found = model.fit_predict(x)
                rows.append(
                    {
                        "features": features.source,
                        "task": task,
                        "method": method,
                        "n_clusters": k,
                        "n": len(y),
                        "nmi": normalized_mutual_info_score(y, found),
                        "ari": adjusted_rand_score(y, found),
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- probes


def make_splitter(
    scheme: str, y: np.ndarray, groups: np.ndarray, *, n_splits: int = 5, seed: int = 0
):
    """Folds for a scheme: "stratified", "grouped" (StratifiedGroupKFold: specimens stay whole,
    class shares kept as far as groups allow) or "group-kfold" (plain GroupKFold)."""
    smallest = int(pd.Series(y).value_counts().min())
    if scheme == "stratified":
        return StratifiedKFold(max(2, min(n_splits, smallest)), shuffle=True, random_state=seed)
    # no more folds than specimens, nor than the largest class (StratifiedGroupKFold needs it)
    largest = int(pd.Series(y).value_counts().max())
    n = max(2, min(n_splits, len(np.unique(groups)), largest))
    if scheme == "grouped":
        return StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    if scheme == "group-kfold":
        return GroupKFold(n)
    raise ValueError(f"unknown CV scheme {scheme!r}")


def _classifier(method: str, *, k: int = 5, seed: int = 0):
    if method == "logreg":
        return LogisticRegression(C=PROBE_C, max_iter=5000, random_state=seed)
    if method == "knn":
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    raise ValueError(f"unknown probe {method!r}")


@_one_thread
def out_of_fold(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    method: str = "logreg",
    scheme: str = "grouped",
    n_splits: int = 5,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions and probabilities (columns in `classes` order, 0 for a class
    absent from a training fold)."""
    classes = list(classes if classes is not None else sorted(set(y)))
    proba = np.zeros((len(y), len(classes)))
    splitter = make_splitter(scheme, y, groups, n_splits=n_splits, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny classes: "least populated class" warnings
        for train, test in splitter.split(x, y, groups):
            model = _classifier(method, k=min(5, len(train)), seed=seed).fit(x[train], y[train])
            columns = [classes.index(c) for c in model.classes_]
            proba[np.ix_(test, columns)] = model.predict_proba(x[test])
    predicted = np.array([classes[i] for i in proba.argmax(axis=1)], dtype=object)
    return predicted, proba


def probe_table(
    features: FeatureSet,
    *,
    tasks: Sequence[str] = ("technique",),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Logistic-regression and k-NN probes, ungrouped and grouped folds side by side."""
    rows = []
    for task in tasks:
        x, y, groups, _ = features.task(task)
        classes = taxonomy.TASKS[task][1]
        for method in ("logreg", "knn"):
            for cv_name, scheme in CV_SCHEMES.items():
                pred, proba = out_of_fold(
                    x, y, groups, method=method, scheme=scheme, seed=seed, classes=classes
                )
                rows.append(
                    {
                        "features": features.source,
                        "task": task,
                        "probe": f"{method} (C={PROBE_C:g})" if method == "logreg" else "5-NN",
                        "cv": cv_name,
                        **metrics.summarise(
                            y, pred, scores=proba, classes=classes, n_boot=n_boot, seed=seed
                        ),
                    }
                )
    return pd.DataFrame(rows)


def probe_scores(features: FeatureSet, *, seed: int = 0) -> pd.DataFrame:
    """Contract file probe_scores.csv: out-of-fold probabilities of the grouped logreg probe."""
    frames = []
    for task, (_, classes) in taxonomy.TASKS.items():
        x, y, groups, ids = features.task(task)
        if len(set(y)) < 2:
            continue
        _, proba = out_of_fold(
            x, y, groups, method="logreg", scheme="grouped", seed=seed, classes=classes
        )
        frames.append(
            pd.DataFrame(
                {
                    "micrograph_no": np.repeat(ids, len(classes)),
                    "model": f"probe:{features.source}",
                    "weights": "pretrained" if features.pretrained else "random",
                    "task": task,
                    "prompt_set": "logreg-grouped-cv",
                    "class": np.tile(classes, len(ids)),
                    "probability": proba.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_probe_scores(frame: pd.DataFrame) -> Path:
    return clip_outputs.write_probe_scores(frame)


@_one_thread
def learning_curve(
    features: FeatureSet,
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
                    model = _classifier("logreg", seed=seed).fit(x[train], y[train])
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


def learning_curve_figure(curve: pd.DataFrame, title_labels: Sequence[str] = ()):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for source, g in curve.groupby("features", sort=False):
        ax.errorbar(
            g["labels_per_class"],
            g["balanced_accuracy"],
            yerr=g["balanced_accuracy_sd"].fillna(0),
            marker="o",
            capsize=3,
            label=f"{source}: balanced acc.",
        )
        ax.plot(
            g["labels_per_class"],
            g["accuracy"],
            marker="s",
            linestyle="--",
            label=f"{source}: accuracy",
        )
    ax.set_xlabel("labelled images per class (training folds)")
    ax.set_ylabel("grouped-CV score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(
        provenance.stamp("Weak labelling: logreg probe vs labels per class", list(title_labels))
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- retrieval


@_one_thread
def retrieval_table(
    features: FeatureSet, *, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Image->image precision@k by technique family (query excluded), with and without the
    query's own specimen among the candidates (near-duplicates make retrieval look easy)."""
    x, y, groups, _ = features.task("technique")
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    rows = []
    for variant, mask in (
        ("all other images", None),
        ("other specimens only", groups[:, None] == groups[None, :]),
    ):
        s = sims.copy()
        if mask is not None:
            s[mask] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")
        for k in ks:
            if k >= len(y):
                continue
            hits = (y[order[:, :k]] == y[:, None]).mean(axis=1)
            low, high = metrics.bootstrap_ci(
                lambda i, h=hits: float(h[i].mean()), len(hits), n_boot=n_boot, seed=seed
            )
            rows.append(
                {
                    "features": features.source,
                    "candidates": variant,
                    "k": k,
                    "n_queries": len(y),
                    "precision_at_k": float(hits.mean()),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reference README


def reference_gap_table(
    features: FeatureSet, *, seeds: Sequence[int] = (0,), n_boot: int = 1000
) -> pd.DataFrame:
    """Why the reference README's balanced accuracy differs from ours: the same logreg probe
    under label variants (plain cross-polarised records: per material as in our taxonomy, all
    reflected, all transmitted) and fold schemes. CIs: bootstrap over images (seeded)."""
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
        x, y = features.embeddings[mask], labels[mask].to_numpy(object)
        groups = records.loc[mask, "specimen_id"].to_numpy()
        for scheme, cv_name in (
            ("stratified", "StratifiedKFold(5, shuffle)"),
            ("grouped", "StratifiedGroupKFold(5, shuffle)"),
            ("group-kfold", "GroupKFold(5)"),
        ):
            for seed in seeds if scheme != "group-kfold" else seeds[:1]:
                pred, _ = out_of_fold(
                    x, y, groups, method="logreg", scheme=scheme, seed=seed, classes=classes
                )
                row = metrics.summarise(y, pred, n_boot=n_boot, seed=seed)
                rows.append(
                    {
                        "features": features.source,
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


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack per-feature-set tables (empty ones dropped)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def labels_of(feature_sets: Sequence[FeatureSet]) -> list[str]:
    """Substitute labels of any of the feature sets, for a table or figure covering them all."""
    out: list[str] = []
    for fs in feature_sets:
        out += [label for label in fs.labels if label not in out]
    return out
