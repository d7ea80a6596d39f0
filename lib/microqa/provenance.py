"""What each number came from: data source, model and weights, fallbacks, git sha, parameters.

The run record lives in `build/provenance.json`, one section per stage. Every offline
substitution (sample data instead of the site, random weights instead of pretrained ones)
goes through `substitute()`, which refuses under STRICT=1, prints a loud banner and is
written into the record, so nothing falls back quietly.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from microqa import config


class StrictModeError(RuntimeError):
    """Raised under STRICT=1 when a run would use an offline substitute."""


def record_path() -> Path:
    return config.build_dir() / "provenance.json"


def load() -> dict[str, Any]:
    path = record_path()
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=config.repo_root(), capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip()


def git_sha() -> str:
    """Short commit of the checkout, "-dirty" when tracked files other than the pipeline's own
    outputs (figures/, tables/, README.md, which a run rewrites) differ from it."""
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        if not sha:
            return "unknown"
        changed = _git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!figures",
            ":!tables",
            ":!README.md",
        )
        return sha + ("-dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record_stage(stage: str, **fields: Any) -> dict[str, Any]:
    """Replace the record of `stage` (keeping its fallbacks) and stamp it with time and sha."""
    record = load()
    previous = record.get(stage, {})
    section = {
        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "profile": config.profile().name,
        "strict": config.strict(),
        "fallbacks": previous.get("fallbacks", []) if fields.pop("keep_fallbacks", True) else [],
        **fields,
    }
    record[stage] = section
    _write_atomic(record_path(), record)
    return section


def reset_stage(stage: str) -> None:
    """Forget a stage's record (and its fallbacks) at the start of a fresh run of that stage."""
    record = load()
    record.pop(stage, None)
    _write_atomic(record_path(), record)


def substitute(stage: str, what: str, reason: str) -> str:
    """Declare an offline substitute. Raises under STRICT=1; otherwise records it and shouts.

    Returns the banner text so notebooks can display it.
    """
    message = f"OFFLINE SUBSTITUTE in stage '{stage}': {what}. Reason: {reason}"
    if config.strict():
        raise StrictModeError(message + " (STRICT=1 forbids substitutes)")
    record = load()
    section = record.setdefault(stage, {})
    fallbacks = section.setdefault("fallbacks", [])
    entry = {"what": what, "reason": reason}
    if entry not in fallbacks:
        fallbacks.append(entry)
    _write_atomic(record_path(), record)
    bar = "!" * min(100, max(40, len(what) + 20))
    print(f"{bar}\n{message}\n{bar}", file=sys.stderr, flush=True)
    return message


def fallbacks(stage: str | None = None) -> list[dict[str, str]]:
    record = load()
    stages = [stage] if stage else list(record)
    out = []
    for name in stages:
        for entry in record.get(name, {}).get("fallbacks", []):
            out.append({"stage": name, **entry})
    return out


def banner(stages: list[str] | None = None) -> str:
    """A Markdown banner listing every substitute behind the given stages (or all)."""
    entries = []
    for stage in stages or list(load()):
        entries.extend(fallbacks(stage))
    if not entries:
        return "**Provenance:** real data and real weights throughout; no offline substitutes."
    lines = ["## ⚠️ OFFLINE SUBSTITUTES IN USE — numbers below are not the real study's", ""]
    lines += [f"- **{e['stage']}**: {e['what']} — {e['reason']}" for e in entries]
    return "\n".join(lines)


def stamp(title: str, labels: list[str] | tuple[str, ...]) -> str:
    """Append substitute labels (e.g. 'random weights', 'sample data') to a figure/table title."""
    labels = [label for label in labels if label]
    return f"{title} [{'; '.join(labels).upper()}]" if labels else title
