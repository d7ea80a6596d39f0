"""SQLite answer cache: every question answered once, kept across kills and reruns.

One row per question, keyed by everything that can change the answer: backend, model id and
revision (weights identity), the prompt's hash, the image's sha256, the mode and the
generation parameters. Rows are written with INSERT OR IGNORE and committed per batch in WAL
mode, so a run killed with SIGKILL loses at most the batch in flight and a rerun asks only
what is missing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    mode TEXT NOT NULL,
    params TEXT NOT NULL,
    raw_text TEXT,
    choice TEXT,
    probabilities TEXT,
    latency_s REAL,
    visual_tokens INTEGER,
    created_at TEXT NOT NULL
)
"""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    return sha256_bytes(Path(path).read_bytes())


def prompt_hash(prompt: str, system: str | None = None, letters: tuple[str, ...] = ()) -> str:
    payload = json.dumps({"system": system, "prompt": prompt, "letters": list(letters)})
    return sha256_bytes(payload.encode("utf-8"))


@dataclass(frozen=True)
class AnswerKey:
    backend: str
    model_id: str
    revision: str
    prompt_hash: str
    image_sha256: str
    mode: str  # "score" or "generate"
    params: str  # canonical JSON of the generation parameters

    @property
    def key(self) -> str:
        return sha256_bytes("\x1f".join(self.__dict__.values()).encode("utf-8"))


def canonical_params(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass
class Answer:
    raw_text: str | None
    choice: str | None
    probabilities: dict[str, float] | None
    latency_s: float
    visual_tokens: int | None


class AnswerCache:
    """The cache file; safe for one writer at a time plus readers (WAL)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable per commit
            self.conn.execute(SCHEMA)
            self.conn.commit()
        except sqlite3.DatabaseError as exc:
            raise sqlite3.DatabaseError(f"answer cache {self.path} is unreadable: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(self, keys: list[AnswerKey]) -> dict[str, Answer]:
        """Cached answers of `keys`, by AnswerKey.key (absent keys are missing)."""
        out: dict[str, Answer] = {}
        ids = [k.key for k in keys]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.conn.execute(
                "SELECT key, raw_text, choice, probabilities, latency_s, visual_tokens "
                f"FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, raw, choice, probs, latency, vtok in rows:
                out[key] = Answer(raw, choice, json.loads(probs) if probs else None, latency, vtok)
        return out

    def put_many(self, items: list[tuple[AnswerKey, Answer]]) -> int:
        """Store answers in one transaction; a key already present is left as it was.

        Returns how many rows were new."""
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        rows = [
            (
                k.key,
                k.backend,
                k.model_id,
                k.revision,
                k.prompt_hash,
                k.image_sha256,
                k.mode,
                k.params,
                a.raw_text,
                a.choice,
                json.dumps(a.probabilities) if a.probabilities is not None else None,
                a.latency_s,
                a.visual_tokens,
                now,
            )
            for k, a in items
        ]
        with self.conn:  # one commit per batch
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
            return self.conn.total_changes - before

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
