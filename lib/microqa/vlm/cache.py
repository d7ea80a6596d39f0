"""SQLite answer cache: every question answered once, kept across kills and reruns.

One row per question, keyed by everything that can change the answer: backend, model id and
revision (weights identity), the prompt's hash, the image's sha256, the image variant
(`data.variants`; the original image keeps the key it had before variants existed, so older
caches stay valid), the mode and the generation parameters. Rows are written with INSERT OR
IGNORE and committed per batch in WAL mode, so a run killed with SIGKILL loses at most the
batch in flight and a rerun asks only what is missing.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microqa import files
from microqa.data.variants import ORIGINAL
from microqa.files import sha256_bytes

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
    created_at TEXT NOT NULL,
    letter_mass REAL,
    variant TEXT NOT NULL DEFAULT 'original'
)
"""
COLUMNS = (
    "key, backend, model_id, revision, prompt_hash, image_sha256, mode, params, raw_text, "
    "choice, probabilities, latency_s, visual_tokens, created_at, letter_mass, variant"
)


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
    variant: str = ORIGINAL  # the image variant asked about (data.variants, or "no_image")

    @property
    def key(self) -> str:
        parts = [
            self.backend,
            self.model_id,
            self.revision,
            self.prompt_hash,
            self.image_sha256,
            self.mode,
            self.params,
        ]
        if self.variant != ORIGINAL:  # the original keeps its pre-variant key
            parts.append(f"variant={self.variant}")
        return sha256_bytes("\x1f".join(parts).encode("utf-8"))


def canonical_params(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass
class Answer:
    raw_text: str | None
    choice: str | None
    probabilities: dict[str, float] | None
    latency_s: float
    visual_tokens: int | None
    letter_mass: float | None = None


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(answers)")}
    if "letter_mass" not in columns:  # a cache written before letter mass was kept
        conn.execute("ALTER TABLE answers ADD COLUMN letter_mass REAL")
    if "variant" not in columns:  # a cache written before image variants: originals
        conn.execute("ALTER TABLE answers ADD COLUMN variant TEXT NOT NULL DEFAULT 'original'")
    conn.execute("SELECT COUNT(*) FROM answers").fetchone()


class AnswerCache(files.SQLiteFile):
    """The cache file; safe for one writer at a time plus readers (WAL).

    A file that is not a readable answer cache (corrupted, or something else) is moved aside
    to `<name>.corrupt-<time>`, said so on stderr, and a new cache is started: the answers
    are recomputed, nothing is overwritten."""

    WHAT = "answer cache"
    CONSEQUENCE = "its answers will be asked again"

    def _open(self, path: Path) -> sqlite3.Connection:
        return files.connect_wal(path, _schema, timeout=30)

    def get_many(self, keys: list[AnswerKey]) -> dict[str, Answer]:
        """Cached answers of `keys`, by AnswerKey.key (absent keys are missing)."""
        out: dict[str, Answer] = {}
        ids = [k.key for k in keys]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.db.execute(
                "SELECT key, raw_text, choice, probabilities, latency_s, visual_tokens, "
                f"letter_mass FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, raw, choice, probs, latency, vtok, mass in rows:
                probs = json.loads(probs) if probs else None
                out[key] = Answer(raw, choice, probs, latency, vtok, mass)
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
                a.letter_mass,
                k.variant,
            )
            for k, a in items
        ]
        with self.db:  # one commit per batch
            before = self.db.total_changes
            self.db.executemany(
                f"INSERT OR IGNORE INTO answers ({COLUMNS}) VALUES ({','.join('?' * 16)})", rows
            )
            return self.db.total_changes - before

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
