"""File plumbing written once: atomic writes and content hashes.

Every file the project writes goes through `atomic_write_*`: the bytes land in a temporary
file beside the target and are renamed into place, so a reader (or a rerun after a kill) sees
the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

PARTIAL_SUFFIX = ".partial"


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling and a rename (creates parents)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, payload: Any, *, indent: int = 2) -> Path:
    text = json.dumps(payload, indent=indent, sort_keys=True, ensure_ascii=False, default=str)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: Path | str, frame: pd.DataFrame, **to_csv: Any) -> Path:
    """`frame.to_csv(path, **to_csv)`, atomically (index=False unless given)."""
    to_csv.setdefault("index", False)
    return atomic_write_text(path, frame.to_csv(**to_csv))


@contextlib.contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock beside `path` (`.<name>.lock`) for a read-modify-write of it:
    notebooks that `make reproduce` runs side by side update one provenance record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (weights files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_sqlite(path: Path | str, connect, *, what: str, consequence: str):
    """`connect(path)` (which opens the database and checks its schema), or, when SQLite
    cannot read the file (corrupted, or not a database), the file moved aside to
    `<name>.corrupt-<time>` (with its -wal/-shm/-journal: kept, never overwritten), one line
    on stderr naming it, and a new database. A locked or busy database is left alone."""
    import sqlite3
    import sys
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return connect(path)
    except sqlite3.OperationalError:
        raise  # locked, busy, no permission: the file may be fine
    except sqlite3.DatabaseError as err:  # "file is not a database", "... malformed"
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                os.replace(part, Path(f"{aside}{suffix}"))
        print(
            f"warning: the {what} {path} is unreadable ({err}); moved it aside to {aside.name} "
            f"and started a new one ({consequence})",
            file=sys.stderr,
        )
        return connect(path)


def connect_wal(path: Path, setup, *, timeout: float):
    """An SQLite connection in WAL mode (readers never block the writer; NORMAL sync keeps
    every commit across a killed process) after `setup(connection)` created or checked the
    schema; closed again when setup fails (so `open_sqlite` can move the file aside)."""
    import sqlite3

    db = sqlite3.connect(path, timeout=timeout)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        setup(db)
        db.commit()
    except BaseException:
        db.close()
        raise
    return db


class SQLiteFile:
    """A project cache in one SQLite file: opened (or moved aside and started anew when
    unreadable, `open_sqlite`) on creation, closed on `close()` or leaving a `with` block.
    Subclasses give `_open(path)` (e.g. `connect_wal` with their schema), `WHAT` and
    `CONSEQUENCE` (what the warning says is lost)."""

    WHAT = "cache"
    CONSEQUENCE = "its contents will be recomputed"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.db = open_sqlite(self.path, self._open, what=self.WHAT, consequence=self.CONSEQUENCE)

    def _open(self, path: Path):
        raise NotImplementedError

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
