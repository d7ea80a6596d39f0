"""What each number came from: data source, model and weights, fallbacks, git sha, parameters.

The run record lives in `build/provenance.json`, one section per stage. A `Record` is that
file held by one run (microqa.run.Run owns it): the only reader of the file is `Record.load`.
Every offline substitution (sample data instead of the site, random weights instead of
pretrained ones) goes through `substitute()`, which refuses under STRICT=1, says so loudly and
is added to the run's record, so nothing falls back quietly.

A stage's section is replaced only when the stage finishes: `Record.begin_stage` opens a
pending list in memory, `substitute` adds to it, and `Record.record_stage` writes the stage's
section (its fields, the pending substitutes, the profile that ran) in one atomic write. A run
that fails on a bad parameter or crashes half-way leaves the previous record as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microqa import config
from microqa.files import atomic_write_json, locked


class StrictModeError(RuntimeError):
    """Raised under STRICT=1 when a run would use an offline substitute."""


def record_path() -> Path:
    return config.build_dir() / "provenance.json"


GIT_TIMEOUT = 10  # seconds; a slower git answers "unknown" rather than holding up a run


def _git(*args: str) -> str:
    # --no-optional-locks: `status` must not take the user's index lock to refresh it. A status
    # killed by the timeout (notebooks' clean filter on a racily-clean checkout can take 10 s)
    # would leave .git/index.lock behind, and every later status would then be slow too.
    out = subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=config.repo_root(),
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
    )
    return out.stdout.strip()


def git_sha() -> str:
    """Short commit of the checkout, "-dirty" when tracked files other than the pipeline's own
    outputs (figures/, tables/, docs/, README.md, which a run rewrites) differ from it."""
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
            ":!docs",
            ":!README.md",
        )
        return sha + ("-dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Record:
    """The provenance record of one run: the sections on disk, and the substitutes declared by
    stages running now (`pending`), which are written when their stage finishes."""

    path: Path
    sections: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Record:
        """The record on disk (empty when there is none yet)."""
        path = path or record_path()
        sections = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        return cls(path, sections)

    def section(self, stage: str) -> dict[str, Any]:
        """The written section of `stage` ({} when it never finished)."""
        return self.sections.get(stage, {})

    def begin_stage(self, stage: str) -> None:
        """Start a fresh run of `stage`: substitutes declared from now on belong to it, and the
        stage's written section (with an earlier run's substitutes) stays until record_stage."""
        self.pending[stage] = []

    def record_stage(
        self, stage: str, *, profile: config.Profile | str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Write the finished section of `stage`, stamped with time, git sha and the profile
        that ran. Its substitutes are those declared since begin_stage; a stage never begun
        keeps the substitutes already written for it."""
        if stage in self.pending:
            substitutes = self.pending.pop(stage)
        else:
            substitutes = list(self.section(stage).get("fallbacks", []))
        name = profile.name if isinstance(profile, config.Profile) else profile
        section = {
            "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "git_sha": git_sha(),
            "python": platform.python_version(),
            "profile": config.profile(name).name,
            "strict": config.strict(),
            **fields,
            "fallbacks": substitutes,
        }
        # another notebook of this run may have finished its stage since this record was read
        # (or be finishing one now: `make reproduce` runs 02 beside 03)
        with locked(self.path):
            self.sections = {**Record.load(self.path).sections, stage: section}
            atomic_write_json(self.path, self.sections)
        return section

    def add_substitute(self, stage: str, entry: dict[str, str]) -> None:
        """Add a substitute to `stage`: pending while the stage runs, else written at once
        (so it is never lost)."""
        if stage in self.pending:
            if entry not in self.pending[stage]:
                self.pending[stage].append(entry)
            return
        with locked(self.path):
            self.sections = {**Record.load(self.path).sections, **self.sections}
            fallbacks = self.sections.setdefault(stage, {}).setdefault("fallbacks", [])
            if entry not in fallbacks:
                fallbacks.append(entry)
                atomic_write_json(self.path, self.sections)

    def fallbacks(self, stage: str | None = None) -> list[dict[str, str]]:
        """Substitutes behind `stage` (or every stage): a stage running now shows its own."""
        stages = [stage] if stage else list(dict.fromkeys([*self.sections, *self.pending]))
        out = []
        for name in stages:
            entries = self.pending.get(name, self.section(name).get("fallbacks", []))
            out.extend({"stage": name, **entry} for entry in entries)
        return out

    def banner(self, stages: list[str] | None = None) -> str:
        """A Markdown banner listing every substitute behind the given stages (or all)."""
        entries = []
        for stage in stages or [None]:
            entries.extend(self.fallbacks(stage))
        if not entries:
            return "**Provenance:** real data and real weights throughout; no offline substitutes."
        lines = ["## ⚠️ OFFLINE SUBSTITUTES IN USE — numbers below are not the real study's", ""]
        lines += list(dict.fromkeys(_sentence(e) for e in entries))  # one line per substitute
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
    first = text.split(" ")[0]
    # "Pretrained ..." reads on after "because"; a name ("ViT-B-32:openai", "CUDA") keeps its case
    return text[:1].lower() + text[1:] if first.isalpha() and first[1:].islower() else text


def substitute(stage: str, what: str, reason: str, record: Record | None = None) -> str:
    """Declare an offline substitute. Raises under STRICT=1; otherwise shouts (a notebook's log
    and banner, a command line's stderr) and adds it to `record`, the run's record (a library
    call made outside any run, e.g. a test, has none to add it to; it still shouts).

    Returns the banner text so notebooks can display it.
    """
    message = f"OFFLINE SUBSTITUTE in stage '{stage}': {what}. Reason: {reason}"
    if config.strict():
        raise StrictModeError(message + " (STRICT=1 forbids substitutes)")
    if record is not None:
        record.add_substitute(stage, {"what": what, "reason": reason})
    logging.getLogger(__name__).warning(message)
    return message


def stamp(title: str, labels: list[str] | tuple[str, ...]) -> str:
    """Append substitute labels (e.g. 'random weights', 'sample data') to a figure/table title."""
    labels = [label for label in labels if label]
    return f"{title} [{'; '.join(labels).upper()}]" if labels else title
