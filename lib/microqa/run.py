"""The run object: everything one run of the study is, handed from notebook to library.

A notebook creates it once, in its first cell, from its parameters:

    run = Run.start("03_clip_zero_shot", profile=profile, clip_models=clip_models)

and passes `run` to the library. A `Run` holds

- the resolved **profile** (`config.Profile` with the notebook's parameters applied: models,
  sample sizes, bootstrap size, seeds), and what those parameters changed (`overrides`);
- the **provenance record** of the run (`provenance.Record`): the data stage written by
  notebook 01 (`Run.choose_dataset` stores it), the substitutes of the stage running now;
- the **dataset** it reads (folder, source, complete), from that record;
- the **publishing destination** (`publishing.destination`), with its own folder under
  `build/runs/` for a variant run, named after a short hash of its overrides;
- the **seed**.

Nothing here is module state: two `Run`s in one process do not see each other's choices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microqa import config, provenance, publishing


class RunError(ValueError):
    """A run asked for something it cannot have (no dataset chosen yet, a bad parameter)."""


@dataclass(frozen=True)
class DatasetInfo:
    """The dataset a run reads, as notebook 01 chose it (provenance stage "data")."""

    dir: Path
    source: str  # "user", "existing", "scraped" or "sample" (data.sources.SOURCES)
    complete: bool

    @property
    def shown(self) -> str:
        """The folder as a reader knows it (relative to the repository, never the machine's)."""
        return publishing.relative(self.dir)


@dataclass
class Run:
    name: str  # the notebook (or command) running, e.g. "03_clip_zero_shot"
    profile: config.Profile
    record: provenance.Record
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, name: str, profile: str | None = "full", **overrides: Any) -> Run:
        """The run of notebook `name` in `profile` with some profile fields overridden (None
        keeps the profile's value; lists and dicts may be JSON strings, as papermill passes
        them). Reads the provenance record written by the notebooks before it."""
        base = config.profile(profile)
        try:
            resolved = base.with_overrides(**overrides)
        except ValueError as err:
            raise RunError(f"{name}: {err}") from None
        record = provenance.Record.load()
        changed = resolved.overrides_from(base)  # the user's: they name the run's folder
        if record.section("data").get("source") == "sample":
            given = [key for key, value in overrides.items() if value is not None]
            resolved = resolved.for_sample(kept=given)  # a value given is kept, even the default
        return cls(name, resolved, record, changed)

    # --- settings ------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.profile.seed

    @property
    def n_boot(self) -> int:
        return self.profile.n_boot

    @property
    def variant(self) -> str:
        """A short hash of the overrides ("" when the run uses its profile as it is)."""
        if not self.overrides:
            return ""
        text = json.dumps(self.overrides, sort_keys=True, default=list)
        return "v" + hashlib.sha256(text.encode()).hexdigest()[:8]

    def settings_record(self) -> dict[str, Any]:
        """What provenance records of the run's settings: the resolved profile, its overrides."""
        return {"profile_settings": self.profile.as_record(), "overrides": dict(self.overrides)}

    # --- dataset -------------------------------------------------------------------------------
    @property
    def dataset(self) -> DatasetInfo:
        """The dataset notebook 01 chose for this run (a path stored relative to the repository
        is this checkout's, never another clone's)."""
        data = self.record.section("data")
        if "dataset_dir" not in data:
            raise RunError(
                f"no dataset recorded in {publishing.relative(self.record.path)}; run "
                "notebook 01 first (make reproduce)"
            )
        return DatasetInfo(
            config.repo_path(data["dataset_dir"]),
            data.get("source", "unknown"),
            bool(data.get("complete", True)),
        )

    @property
    def data_labels(self) -> list[str]:
        """'sample data' when this run's data is the embedded sample (no dataset yet: none)."""
        source = self.record.section("data").get("source")
        return ["sample data"] if source == "sample" else []

    # --- provenance ----------------------------------------------------------------------------
    def begin_stage(self, stage: str) -> None:
        self.record.begin_stage(stage)

    def record_stage(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Write the finished section of `stage` with the run's resolved profile."""
        return self.record.record_stage(
            stage, profile=self.profile, **self.settings_record(), **fields
        )

    def substitute(self, stage: str, what: str, reason: str) -> str:
        return provenance.substitute(stage, what, reason, self.record)

    def banner(self, stages: list[str] | None = None) -> str:
        return self.record.banner(stages)

    # --- where outputs go ----------------------------------------------------------------------
    @property
    def destination(self) -> publishing.Destination:
        data = self.record.section("data")
        return publishing.destination(self.profile.name, data, self.variant)

    def note(self) -> str:
        """A notebook's last cell: where this run wrote, and whether it published."""
        return self.destination.note()
