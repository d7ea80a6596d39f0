"""Embedding space: clusters and retrieval find planted structure; near-duplicates are excluded."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from microqa.clip import embedding_space as space
from microqa.data import taxonomy

FAMILIES = taxonomy.TECHNIQUE_FAMILIES


def _feature_set(
    n_specimens=60, per_specimen=4, dim=32, spread=0.02, label_signal=True, seed=0, contributors=12
):
    """Synthetic specimens: near-duplicate images around a specimen centre. With label_signal,
    specimens of one family share a family direction; without, labels are random per specimen."""
    rng = np.random.default_rng(seed)
    family_dirs = rng.normal(size=(len(FAMILIES), dim))
    rows, vectors = [], []
    for s in range(n_specimens):
        family = s % len(FAMILIES)
        centre = rng.normal(size=dim) + (3 * family_dirs[family] if label_signal else 0)
        for _ in range(per_specimen):
            vectors.append(centre + spread * rng.normal(size=dim))
            rows.append(
                {
                    "micrograph_no": len(rows) + 1,
                    "technique_family": FAMILIES[family],
                    "technique_coarse": taxonomy.coarse_class(FAMILIES[family]),
                    "primary_category": taxonomy.PRIMARY_CATEGORIES[s % 4],
                    "specimen_id": s,
                    "contributor": f"contributor {s % contributors}",
                    "technique": "x",
                }
            )
    emb = np.asarray(vectors, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return space.FeatureSet("synthetic", True, pd.DataFrame(rows), emb)


def test_clusters_and_retrieval_find_planted_structure():
    fs = _feature_set(spread=0.01)
    clusters = space.cluster_table(fs, n_clusters=(5,))
    technique = clusters[clusters.task == "technique"]
    assert (technique["nmi"] > 0.9).all() and (technique["ari"] > 0.9).all()
    retrieval = space.retrieval_table(fs, ks=(1, 3), n_boot=50)
    assert (retrieval["precision_at_k"] > 0.95).all()
    # random labels per specimen: other specimens retrieve at chance
    noise = space.retrieval_table(
        _feature_set(n_specimens=100, label_signal=False), ks=(1,), n_boot=50
    )
    other = noise[noise.candidates == "other specimens only"]["precision_at_k"].iloc[0]
    same = noise[noise.candidates == "all other images"]["precision_at_k"].iloc[0]
    assert same > 0.9 and other < 0.4


UMAP_FIT = """
import json, sys
import numpy as np
rng = np.random.default_rng(0)
x = np.vstack([rng.normal(size=(30, 16)) + 4, rng.normal(size=(30, 16)) - 4]).astype(np.float32)
if sys.argv[1] == "umap-learn":  # umap-learn as it comes: nothing cached between processes
    import umap
    coords = umap.UMAP(n_neighbors=15, metric="cosine", random_state=0).fit_transform(x)
    kernels = []
else:
    from microqa.clip import embedding_space as space
    import umap.umap_
    coords = space.umap_2d(x, random_state=0)
    kernels = [umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths]
stats = [(k.stats.cache_hits, k.stats.cache_misses) for k in kernels]
print(json.dumps({"coords": coords.tolist(), "stats": [[sum(h.values()), sum(m.values())]
                                                       for h, m in stats]}))
"""


@pytest.mark.slow  # three fresh processes, one of which compiles UMAP's kernels (~15 s)
def test_cached_umap_kernels_are_loaded_by_the_next_process_and_embed_identically():
    def fit(how: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", UMAP_FIT, how], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    plain = fit("umap-learn")
    first, second = fit("microqa"), fit("microqa")
    # the kernels the first process compiled (or found) are loaded from the cache by the next
    assert all(hits > 0 and misses == 0 for hits, misses in second["stats"]), second["stats"]
    # the same embedding as umap-learn's own uncached kernels give, process after process
    assert first["coords"] == plain["coords"] == second["coords"]
