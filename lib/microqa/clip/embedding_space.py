"""What the image embedding space holds, without text: UMAP, clusters, probes, retrieval.

Runs on the reference ViT-B/32 features in `<shared>/reference` when present (real
pretrained features, labelled from the mirror's records) and on the project's own
embeddings when real weights were used; otherwise on the own random-weight embeddings,
stamped as such. The probes on these features live in `probes`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from microqa import config, provenance, stats
from microqa.clip import outputs as clip_outputs
from microqa.clip import probes
from microqa.data import dataset, taxonomy

REFERENCE_FILE = "clip_vit_b32_openai_image_embeddings.npz"
# The probes are small (hundreds x 512): multi-threaded BLAS only adds contention; on a busy
# 2-core machine one logistic-regression fit took 1.7 s with 2 threads and 0.05 s with 1.


REFERENCE_SOURCE = "reference ViT-B/32 (pretrained)"


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


def reference_records(
    active: pd.DataFrame, profile: config.Profile, data_labels: Sequence[str] = ()
) -> pd.DataFrame:
    """Labels for the reference features: the mirror's records when present, else the active
    dataset's (reference ids outside it then drop out). Trimmed to the profile's size."""
    mirror = config.shared_dir() / "doitpoms"
    if (mirror / "records.csv").is_file():
        records = dataset.load_records(mirror)
    else:
        records = active.copy()
        records.attrs["sample_data"] = "sample data" in data_labels
    return dataset.limit_for_profile(records, profile)


def own_features(run, df: pd.DataFrame) -> list[FeatureSet]:
    """The project's own embeddings, one FeatureSet per model that ran (pretrained first)."""
    sets = []
    for model in run.run_models:
        ids, emb = run.embeddings[model]
        records = df.set_index("micrograph_no").loc[ids].reset_index()
        records.attrs["sample_data"] = "sample data" in run.data_labels
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
    reference = reference_features(reference_records(df, profile, run.data_labels))
    if reference is not None and len(reference.records):
        sets.append(reference)
    own = own_features(run, df)
    sets += [s for s in own if s.pretrained]
    if not sets:
        sets += own[:1]
    return sets


def write_features(features: FeatureSet) -> dict[str, Path]:
    """The features the VLM stage uses for context (written by the CLIP stage's outputs)."""
    return clip_outputs.write_features(
        features.records["micrograph_no"].to_numpy(),
        features.embeddings,
        source=features.source,
        pretrained=features.pretrained,
    )


# --------------------------------------------------------------------------- UMAP


def cache_umap_kernels() -> int:
    """Let numba cache UMAP's kernels that umap-learn compiles afresh in every process.

    umap-learn declares its parallel kernels (the exact k-nearest neighbours of a small set,
    the fuzzy simplicial set, ...) without numba's `cache=True`, so each Python process, every
    notebook kernel and test worker among them, compiled them again on its first fit: about
    14 s on 2 cores for 60 points, against 0.4 s once they are cached. Numba keeps the
    compiled code beside umap's own cached kernels (its `__pycache__`, or numba's user-wide
    cache folder where that is read-only) and recompiles when umap's source changes; the
    embedding computed is the same. Returns how many kernels were switched to caching."""
    import umap.layouts
    import umap.umap_
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    switched = 0
    for module in (umap.umap_, umap.layouts):
        for kernel in vars(module).values():
            if isinstance(kernel, CPUDispatcher) and isinstance(kernel._cache, NullCache):
                kernel.enable_caching()
                switched += 1
    return switched


def compile_umap() -> None:
    """Compile UMAP's kernels into the environment now (`make setup` calls it): about 40 s on
    2 cores, once per environment, instead of during the first notebook run."""
    umap_2d(np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))


def umap_2d(x: np.ndarray, *, random_state: int = 0, n_neighbors: int = 15) -> np.ndarray:
    import umap

    cache_umap_kernels()
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


@probes.one_thread
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


# --------------------------------------------------------------------------- retrieval


@probes.one_thread
def retrieval_table(
    features: FeatureSet, *, ks: Sequence[int] = (1, 5, 10), n_boot: int, seed: int = 0
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
            low, high = stats.interval(
                [hits[i].mean() for i in stats.resamples(y, groups, n_boot=n_boot, seed=seed)]
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


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack per-feature-set tables (empty ones dropped)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def degraded_reason(feature_sets: Sequence[FeatureSet]) -> str:
    """Why the embedding-space results are weaker than a published run's ("" when they are not):
    without the reference features they are never allowed to replace published ones."""
    if feature_sets and feature_sets[0].source == REFERENCE_SOURCE:
        return ""
    return "reference features absent (../shared/reference)"


def labels_of(feature_sets: Sequence[FeatureSet]) -> list[str]:
    """Substitute labels of any of the feature sets, for a table or figure covering them all."""
    out: list[str] = []
    for fs in feature_sets:
        out += [label for label in fs.labels if label not in out]
    return out


def reference_tables(feature_sets, *, n_boot: int) -> dict[str, tuple[pd.DataFrame, str, list]]:
    """On the reference features (when present): the logistic probe under label and fold
    variants, and the reference README's numbers against our 95% intervals, each as
    name -> (table, title, title labels). Empty without the reference features."""
    reference = [fs for fs in feature_sets if fs.source == REFERENCE_SOURCE]
    if not reference:
        return {}
    features = reference[0]
    gap = probes.reference_gap_table(features, n_boot=n_boot)
    return {
        "clip_reference_gap": (
            gap,
            "Reference features: logreg probe under label and fold variants",
            features.labels,
        ),
        "clip_reference_readme": (
            probes.readme_comparison(gap),
            "Reference README numbers vs our 95% CIs",
            features.labels,
        ),
    }
