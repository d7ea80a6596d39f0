"""What each number came from: data source, model and weights, fallbacks, git sha, parameters.

The run record lives in `build/provenance.json`, one section per stage. Every offline
substitution (sample data instead of the site, random weights instead of pretrained ones)
goes through `substitute()`, which refuses under STRICT=1, prints a loud banner and is
written into the record, so nothing falls back quietly.

A stage's record is replaced only when the stage finishes: `begin_stage` opens a pending
record in memory, `substitute` adds to it, and `record_stage` writes the stage's section (its
fields, the pending substitutes, the profile that ran) in one atomic write. A run that fails
on a bad parameter or crashes half-way leaves the previous record as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

from microqa import config
from microqa.files import atomic_write_json

# stage -> the substitutes declared since begin_stage, not yet written (see record_stage)
_pending: dict[str, list[dict[str, str]]] = {}


class StrictModeError(RuntimeError):
    """Raised under STRICT=1 when a run would use an offline substitute."""


def record_path() -> Path:
    return config.build_dir() / "provenance.json"


def load() -> dict[str, Any]:
    path = record_path()
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _write(payload: dict[str, Any]) -> None:
    atomic_write_json(record_path(), payload)


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


def begin_stage(stage: str) -> None:
    """Start a fresh run of `stage`: substitutes declared from now on belong to it, and the
    stage's written record (with an earlier run's substitutes) stays until record_stage."""
    _pending[stage] = []


def reset_stage(stage: str) -> None:
    """Old name of begin_stage (nothing is forgotten on disk before the stage finishes)."""
    begin_stage(stage)


def record_stage(
    stage: str, *, profile: str | config.Profile | None = None, **fields: Any
) -> dict[str, Any]:
    """Write the finished record of `stage`, stamped with time, git sha and the profile that
    ran (`profile`, else the one this process chose: see config.profile).

    Its substitutes are those declared since begin_stage; a stage never begun keeps the
    substitutes already written for it (`keep_fallbacks=False` drops them)."""
    keep = fields.pop("keep_fallbacks", True)
    record = load()
    if stage in _pending:
        substitutes = _pending.pop(stage)
    else:
        substitutes = list(record.get(stage, {}).get("fallbacks", [])) if keep else []
    profile_name = profile.name if isinstance(profile, config.Profile) else profile
    section = {
        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "profile": config.profile(profile_name).name,
        "strict": config.strict(),
        **fields,
        "fallbacks": substitutes,
    }
    record[stage] = section
    _write(record)
    return section


def substitute(stage: str, what: str, reason: str) -> str:
    """Declare an offline substitute. Raises under STRICT=1; otherwise shouts, and records it
    with the stage's run (written at once when the stage was not begun, so it is never lost).

    Returns the banner text so notebooks can display it.
    """
    message = f"OFFLINE SUBSTITUTE in stage '{stage}': {what}. Reason: {reason}"
    if config.strict():
        raise StrictModeError(message + " (STRICT=1 forbids substitutes)")
    entry = {"what": what, "reason": reason}
    if stage in _pending:
        if entry not in _pending[stage]:
            _pending[stage].append(entry)
    else:
        record = load()
        fallbacks = record.setdefault(stage, {}).setdefault("fallbacks", [])
        if entry not in fallbacks:
            fallbacks.append(entry)
        _write(record)
    # Loud where it is read: a notebook shows it in its banner (and logs it to its log file);
    # a command-line run prints it on stderr (logging's last-resort handler).
    logging.getLogger(__name__).warning(message)
    return message


def fallbacks(stage: str | None = None) -> list[dict[str, str]]:
    """Substitutes behind `stage` (or every stage): a stage running now shows its own."""
    record = load()
    stages = [stage] if stage else list(dict.fromkeys([*record, *_pending]))
    out = []
    for name in stages:
        entries = _pending.get(name, record.get(name, {}).get("fallbacks", []))
        out.extend({"stage": name, **entry} for entry in entries)
    return out


def banner(stages: list[str] | None = None) -> str:
    """A Markdown banner with one readable sentence per substitute behind the given stages (or
    all): what stands in for what, and the reason's first clause. The full reason (e.g. the
    error a download raised) stays in the provenance record, not on the page."""
    entries = []
    for stage in stages or [None]:
        entries.extend(fallbacks(stage))
    if not entries:
        return "**Provenance:** real data and real weights throughout; no offline substitutes."
    lines = ["## ⚠️ OFFLINE SUBSTITUTES IN USE — numbers below are not the real study's", ""]
    sentences = [_sentence(e) for e in entries]
    lines += list(dict.fromkeys(sentences))  # one line per distinct substitute
    lines += ["", "The full reason for each is in the run's provenance record."]
    return "\n".join(lines)


def _sentence(entry: dict[str, str]) -> str:
    what = entry["what"].replace(" -> ", " → ").rstrip(".")
    reason = short_reason(entry.get("reason", ""))
    return f"- **{entry['stage']}**: {what}" + (f", because {reason}." if reason else ".")


def short_reason(reason: str, limit: int = 110) -> str:
    """The first clause of a substitute's reason: before a parenthesis (where an exception's
    text usually follows), a semicolon or a sentence end; cut on a word boundary, never
    mid-word, when still longer than `limit` characters."""
    text = " ".join(str(reason).split())
    for stop in (" (", "; ", ". "):
        text = text.split(stop)[0]
    text = text.rstrip(".:, ")
    if len(text) > limit:
        text = text[: text.rfind(" ", 0, limit)].rstrip(".:, ") + " …"
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def stamp(title: str, labels: list[str] | tuple[str, ...]) -> str:
    """Append substitute labels (e.g. 'random weights', 'sample data') to a figure/table title."""
    labels = [label for label in labels if label]
    return f"{title} [{'; '.join(labels).upper()}]" if labels else title
