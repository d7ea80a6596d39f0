"""clip.shards and `embed --shard`: a stable, disjoint split by content hash, read from the flag,
torchrun or a Slurm array; N processes filling one WAL cache give a single-process run's
embeddings bit for bit; caches of separate nodes merge."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from microqa.clip import cache, shards
from tests.clip_fixtures import ARCH, random_b32_file, small_dataset  # noqa: F401
from tests.test_clip_embed import _env

# --------------------------------------------------------------------------- the split


def test_an_image_belongs_to_the_shard_of_its_hash_prefix():
    digest = "0000000000000007" + "f" * 48  # int(prefix) = 7: 7 % 4 = 3, 7 % 2 = 1
    assert [shards.Shard(k, 4).owns(digest) for k in range(4)] == [False, False, False, True]
    assert [shards.Shard(k, 2).owns(digest) for k in range(2)] == [False, True]
    assert shards.WHOLE.owns(digest)


def test_every_image_is_in_exactly_one_shard_and_parts_are_even():
    rng = np.random.default_rng(0)
    hashes = [rng.bytes(32).hex() for _ in range(4000)]
    owners = [[k for k in range(4) if shards.Shard(k, 4).owns(h)] for h in hashes]
    assert all(len(o) == 1 for o in owners)
    sizes = np.bincount([o[0] for o in owners], minlength=4)
    assert sizes.min() > 900  # ~1000 each; a split on a constant part of the hash puts all in one


@pytest.mark.parametrize(
    ("text", "expected"), [("1/4", (1, 4)), (" 0 / 1 ", (0, 1)), ("none", (0, 1))]
)
def test_parse(text, expected):
    shard = shards.parse(text)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "1of4", "", "a/b"])
def test_parse_refuses_what_is_not_k_of_n(text):
    with pytest.raises(ValueError, match="shard"):
        shards.parse(text)


def test_shard_from_torchrun_and_slurm_array_variables():
    torchrun = {"RANK": "2", "WORLD_SIZE": "8", "LOCAL_RANK": "2"}
    assert shards.from_env(torchrun) == shards.Shard(2, 8, "RANK/WORLD_SIZE")
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert (shards.from_env(slurm).index, shards.from_env(slurm).count) == (3, 4)
    # --array=1-4: ids 1..4 are shards 0..3
    from_one = {**slurm, "SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert (shards.from_env(from_one).index, shards.from_env(from_one).count) == (3, 4)
    assert shards.from_env({}) is None
    # the flag wins over the environment; nothing at all means the whole set
    assert shards.resolve("0/2", torchrun) == shards.Shard(0, 2)
    assert shards.resolve("none", torchrun).whole
    assert shards.resolve(None, torchrun).label == "2/8"
    assert shards.resolve(None, {}).whole
    with pytest.raises(ValueError, match="RANK"):
        shards.from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="0 <= K < N"):
        shards.from_env({"RANK": "2", "WORLD_SIZE": "2"})


# --------------------------------------------------------------------------- the cache


def test_the_cache_is_in_wal_mode_and_merges_another(tmp_path):
    with cache.EmbeddingCache(tmp_path / "a.sqlite") as a:
        assert a.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        a.put_images("m", [("h1", np.ones(3)), ("h2", np.zeros(3))])
    with cache.EmbeddingCache(tmp_path / "b.sqlite") as b:
        b.put_images("m", [("h2", np.full(3, 5.0)), ("h3", np.full(3, 2.0))])
        b.put_texts("m", [("a photo", np.ones(3))])
        assert b.merge(tmp_path / "a.sqlite") == 1  # h1 added, h2 kept as it was
        found = b.images("m", ["h1", "h2", "h3"])
        assert found["h1"].tolist() == [1, 1, 1] and found["h2"].tolist() == [5, 5, 5]
        assert b.count_images("m") == 3 and "a photo" in b.texts("m", ["a photo"])


def test_the_original_variant_keeps_the_plain_key():
    assert cache.variant_key("ViT|sha256:1", "original") == "ViT|sha256:1"
    assert cache.variant_key("ViT|sha256:1", "rot90") == "ViT|sha256:1|variant:rot90"


# --------------------------------------------------------------------------- end to end


def test_four_processes_fill_one_cache_and_equal_one_process_bit_for_bit(
    tmp_path,
    random_b32_file,  # noqa: F811
):
    records = small_dataset(tmp_path / "ds", 10)
    model = f"{ARCH}:{random_b32_file}"
    args = ["--dataset", str(tmp_path / "ds"), "--model", model, "--batch-size", "3"]
    args += ["--workers", "0"]
    command = [sys.executable, "-m", "microqa", "embed", *args]
    sharded = tmp_path / "sharded"
    procs = [
        subprocess.Popen(
            [*command, "--shard", f"{k}/4", "--out", str(tmp_path / "part.npz")],
            env=_env(sharded),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, stderr
        assert "shard" in stdout
    parts = []
    for k in range(4):
        with np.load(tmp_path / f"part.shard-{k}-of-4.npz") as part:
            parts.append(part["micrograph_no"].tolist())
    numbers = sorted(records["micrograph_no"].astype(int))
    assert sorted(sum(parts, [])) == numbers  # disjoint parts that cover the set
    assert sum(bool(p) for p in parts) >= 2  # the work was really split

    # the merge: a run without a shard finds everything in the one cache
    merged = subprocess.run(
        [*command, "--shard", "none", "--out", str(tmp_path / "merged.npz")],
        env=_env(sharded),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert merged.returncode == 0, merged.stderr
    assert f"0 embedded, {len(numbers)} from cache" in merged.stdout

    single = subprocess.run(
        [*command, "--out", str(tmp_path / "single.npz")],  # batches of other images
        env=_env(tmp_path / "single"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    with np.load(tmp_path / "merged.npz") as a, np.load(tmp_path / "single.npz") as b:
        assert a["micrograph_no"].tolist() == b["micrograph_no"].tolist() == numbers
        assert a["embeddings"].tobytes() == b["embeddings"].tobytes()  # bit for bit
    db = sharded / "data" / "cache" / cache.CACHE_FILE
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(numbers)


def test_a_bad_shard_is_a_one_line_error(tmp_path):
    small_dataset(tmp_path / "ds", 1)
    result = subprocess.run(
        [sys.executable, "-m", "microqa", "embed", "--dataset", str(tmp_path / "ds")]
        + ["--model", "ViT-B-32:openai", "--shard", "4/4"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert "4/4" in result.stderr
