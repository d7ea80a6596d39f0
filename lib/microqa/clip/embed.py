"""Image embeddings: decoding, batching with DataLoader workers, and the SQLite cache.

Images are decoded by THE project decoder (`images.open_rgb`: every PIL mode, 16-bit
stretched, EXIF, pixel limit), so CLIP sees the pixels the VLMs see. DataLoader workers decode
and preprocess while the model runs.

The cache (`config.cache_dir()/clip_embeddings.sqlite`) is keyed by (architecture + weights
identity, image sha256): a second run embeds nothing and new images embed alone. Each batch is
committed as soon as it is computed, so a killed or failed run keeps every finished batch and a
rerun computes only the rest. An image that cannot be decoded is skipped and reported, never
fatal. A cache file SQLite cannot read is moved aside and rebuilt, saying so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from microqa import config, files, images

if TYPE_CHECKING:  # models imports this module for the weights' hash memo
    from microqa.clip.models import ClipModel

CACHE_FILE = "clip_embeddings.sqlite"
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


# --------------------------------------------------------------------------- the cache


def cache_path() -> Path:
    return config.cache_dir() / CACHE_FILE


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60)
    try:
        db.executescript(_SCHEMA)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")
    except BaseException:
        db.close()
        raise
    return db


class EmbeddingCache:
    """Image and text embeddings per model identity, file hashes, and measured speeds."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        self.db = files.open_sqlite(
            self.path,
            _connect,
            what="CLIP embedding cache",
            consequence="its embeddings will be recomputed",
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file_sha256(self, path: Path | str) -> str:
        """sha256 of a file, memoised by (path, size, mtime) so big files hash once."""
        path = Path(path).resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        row = self.db.execute(
            "SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?", key
        ).fetchone()
        if row:
            return row[0]
        value = files.sha256_file(path)
        self.db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (*key, value))
        self.db.commit()
        return value

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


def last_timing(loaded: ClipModel) -> dict | None:
    with EmbeddingCache() as cache:
        return cache.last_timing(loaded.cache_key)


# --------------------------------------------------------------------------- decoding


def _reason(error: Exception, path: str) -> str:
    """The error's reason without the path it starts with (the caller names the file)."""
    return str(error).removeprefix(f"{path}: ") or type(error).__name__


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers, so the model never waits for JPEGs."""

    def __init__(self, paths: Sequence[str], preprocess):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(images.open_rgb(self.paths[i])), ""
        except images.ImageError as err:
            return i, None, _reason(err, self.paths[i])


def _collate(items):
    """(positions, pixels or None, [(position, reason)] of the images that failed to decode)."""
    ok = [(i, pixels) for i, pixels, _ in items if pixels is not None]
    failed = [(i, reason) for i, pixels, reason in items if pixels is None]
    positions = torch.tensor([i for i, _ in ok], dtype=torch.long)
    return positions, (torch.stack([p for _, p in ok]) if ok else None), failed


def default_workers() -> int:
    # One worker per core (capped): on a GPU machine decoding is the bottleneck, so every core
    # should decode; bench/bench_clip.py measures the effect.
    return max(1, min(16, os.cpu_count() or 1))


def embed_tensors_loader(
    paths: Sequence[str], preprocess, *, batch_size: int, num_workers: int, device: str
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


# --------------------------------------------------------------------------- embedding


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # (n, d) float32, L2-normalised, in path order; NaN rows: failures
    n_computed: int
    n_cached: int
    seconds: float  # wall time of the computed part (decode + preprocess + forward)
    device: str
    failures: dict[int, str] = field(default_factory=dict)  # position in paths -> reason

    @property
    def ok(self) -> np.ndarray:
        """Mask of the paths that have an embedding."""
        mask = np.ones(len(self.embeddings), bool)
        mask[list(self.failures)] = False
        return mask


def embed_images(
    loaded: ClipModel,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> EmbeddingResult:
    """L2-normalised image embeddings: cached ones read back, the rest computed in batches and
    each batch committed to the cache at once. Undecodable images are skipped (`failures`)."""
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    out: list[np.ndarray | None] = [None] * len(paths)
    failures: dict[int, str] = {}
    with EmbeddingCache() if use_cache else contextlib.nullcontext() as cache:
        hashes = [""] * len(paths)
        if cache is not None:
            for i, path in enumerate(paths):
                try:
                    hashes[i] = cache.file_sha256(path)
                except OSError as err:
                    failures[i] = f"cannot read ({err.strerror or err})"
            found = cache.images(loaded.cache_key, [h for h in hashes if h])
            for i, digest in enumerate(hashes):
                if digest in found:
                    out[i] = found[digest]
        todo = [i for i, v in enumerate(out) if v is None and i not in failures]
        n_cached = sum(v is not None for v in out)
        seconds, n_computed = 0.0, 0
        if todo:
            workers = default_workers() if num_workers is None else num_workers
            loader = embed_tensors_loader(
                [paths[i] for i in todo],
                loaded.preprocess,
                batch_size=batch_size,
                num_workers=workers,
                device=loaded.device,
            )
            bar = tqdm(
                total=len(todo),
                desc=f"embed {loaded.label}",
                disable=not progress,
                unit="img",
                file=sys.stderr,
            )
            start = time.perf_counter()
            with torch.inference_mode():
                for positions, pixels, failed in loader:
                    for j, reason in failed:
                        failures[todo[j]] = reason
                    if pixels is not None:
                        feats = loaded.model.encode_image(
                            pixels.to(loaded.device, non_blocking=True)
                        )
                        feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
                        batch = [todo[j] for j in positions.tolist()]
                        for i, vec in zip(batch, feats, strict=True):
                            out[i] = vec.astype(np.float32)
                        if cache is not None:
                            cache.put_images(loaded.cache_key, [(hashes[i], out[i]) for i in batch])
                        n_computed += len(batch)
                    bar.update(len(positions) + len(failed))
            seconds = time.perf_counter() - start
            bar.close()
            if cache is not None and n_computed:
                cache.record_timing(loaded.cache_key, loaded.device, n_computed, seconds)
    dim = next((len(v) for v in out if v is not None), 0)
    matrix = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for i, vec in enumerate(out):
        if vec is not None:
            matrix[i] = vec
    return EmbeddingResult(matrix, n_computed, n_cached, seconds, loaded.device, failures)


def encode_texts(loaded: ClipModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(loaded.device)
            feats = loaded.model.encode_text(tokens)
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def cached_text_embeddings(loaded: ClipModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{text: normalised embedding}; texts already embedded by this model come from the cache."""
    unique = list(dict.fromkeys(texts))
    with EmbeddingCache() as cache:
        found = cache.texts(loaded.cache_key, unique)
        todo = [t for t in unique if t not in found]
        if todo:
            for text, vec in zip(todo, encode_texts(loaded, todo), strict=True):
                found[text] = vec.astype(np.float32)
            cache.put_texts(loaded.cache_key, [(t, found[t]) for t in todo])
    return found
