"""The CLIP embedding cache: one SQLite file keyed by (architecture + weights identity, image
sha256), with text embeddings, memoised file hashes and timings beside them.

Each batch is committed as soon as it is computed (`clip.embed`), so a killed run keeps every
finished batch. The file is in WAL mode with a busy timeout, so the N processes of a sharded run
(`clip.shards`) write to it at once on one file system (WAL needs shared memory: on a network
file system give each node its own cache directory, MICROQA_DATA, and copy the rows over with
`EmbeddingCache.merge`).

An image variant (`data.variants`) other than the original is part of the model key
(`variant_key`); the original keeps the plain key, so caches written before variants existed
stay valid. A cache file SQLite cannot read is moved aside and rebuilt, saying so. Its own
module so that `clip.models` (the weights' hash memo) and `clip.embed` both build on it without
importing each other.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from microqa import config, files
from microqa.data.variants import ORIGINAL

CACHE_FILE = "clip_embeddings.sqlite"
BUSY_TIMEOUT_S = 600  # a writer waits this long for another shard's commit before giving up
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_key TEXT NOT NULL, image_sha256 TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (model_key, image_sha256));
CREATE TABLE IF NOT EXISTS text_embeddings (
    model_key TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (model_key, text));
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS timings (
    model_key TEXT NOT NULL, device TEXT NOT NULL, n INTEGER, seconds REAL,
    recorded_at REAL);
"""


def cache_path() -> Path:
    return config.cache_dir() / CACHE_FILE


def variant_key(model_key: str, variant: str) -> str:
    """The cache key of a model's embeddings of an image variant (the original: the model key)."""
    return model_key if variant == ORIGINAL else f"{model_key}|variant:{variant}"


def _schema(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {check}")


class EmbeddingCache(files.SQLiteFile):
    """Image and text embeddings per model identity, file hashes, and measured speeds. Several
    processes may fill one cache (WAL, with a long busy timeout)."""

    WHAT = "CLIP embedding cache"
    CONSEQUENCE = "its embeddings will be recomputed"

    def __init__(self, path: Path | None = None):
        super().__init__(path or cache_path())

    def _open(self, path: Path) -> sqlite3.Connection:
        return files.connect_wal(path, _schema, timeout=BUSY_TIMEOUT_S)

    def file_sha256(self, path: Path | str) -> str:
        """sha256 of a file, memoised by (path, size, mtime) so big files hash once."""
        (value,) = self.file_sha256s([path])
        if isinstance(value, OSError):
            raise value
        return value

    def file_sha256s(self, paths: Iterable[Path | str]) -> list[str | OSError]:
        """`file_sha256` of each path in one transaction (one commit, not one per file, so N
        shards hashing the same images do not queue on each other); an OSError in place of the
        hash of a file that cannot be read."""
        hashes: list[str | OSError] = []
        new = []
        for path in paths:
            try:
                path = Path(path).resolve()
                stat = path.stat()
                key = (str(path), stat.st_size, stat.st_mtime_ns)
                row = self.db.execute(
                    "SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?", key
                ).fetchone()
                value = row[0] if row else files.sha256_file(path)
            except OSError as err:
                hashes.append(err)
                continue
            if not row:
                new.append((*key, value))
            hashes.append(value)
        if new:
            self.db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", new)
            self.db.commit()
        return hashes

    def merge(self, other: Path) -> int:
        """Copy the image and text embeddings of another cache file (e.g. one node's) into this
        one; rows already here are kept. Returns the number of image rows added."""
        before = self.db.total_changes
        self.db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            added = 0
            for table in ("embeddings", "text_embeddings"):
                self.db.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM other.{table}")
                if table == "embeddings":
                    added = self.db.total_changes - before
            self.db.commit()
        finally:
            self.db.execute("DETACH DATABASE other")
        return added

    def _get(self, table: str, column: str, model_key: str, keys: Iterable[str]) -> dict:
        found = {}
        for key in dict.fromkeys(keys):
            row = self.db.execute(
                f"SELECT vector FROM {table} WHERE model_key=? AND {column}=?", (model_key, key)
            ).fetchone()
            if row:
                found[key] = np.frombuffer(row[0], dtype=np.float32).copy()
        return found

    def _put(self, table: str, model_key: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self.db.executemany(
            f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)",
            [(model_key, key, np.asarray(v, np.float32).tobytes()) for key, v in items],
        )
        self.db.commit()  # committed now: a later kill or failure keeps these rows

    def images(self, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        return self._get("embeddings", "image_sha256", model_key, hashes)

    def put_images(self, model_key: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self._put("embeddings", model_key, items)

    def count_images(self, model_key: str) -> int:
        query = "SELECT COUNT(*) FROM embeddings WHERE model_key=?"
        return int(self.db.execute(query, (model_key,)).fetchone()[0])

    def texts(self, model_key: str, texts: Iterable[str]) -> dict[str, np.ndarray]:
        return self._get("text_embeddings", "text", model_key, texts)

    def put_texts(self, model_key: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self._put("text_embeddings", model_key, items)

    def record_timing(self, model_key: str, device: str, n: int, seconds: float) -> None:
        self.db.execute(
            "INSERT INTO timings VALUES (?, ?, ?, ?, ?)",
            (model_key, device, n, seconds, time.time()),
        )
        self.db.commit()

    def last_timing(self, model_key: str) -> dict | None:
        """The latest measured embedding speed of this model (from any run), or None."""
        row = self.db.execute(
            "SELECT device, n, seconds FROM timings WHERE model_key=? AND n>0 "
            "ORDER BY recorded_at DESC LIMIT 1",
            (model_key,),
        ).fetchone()
        if not row:
            return None
        return {"seconds_per_image": row[2] / row[1], "device": row[0], "n": int(row[1])}
