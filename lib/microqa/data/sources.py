"""Which dataset a run uses, and why: notebook 01's choice, recorded in provenance (stage "data").

In this order:

1. **user** - a folder the user named (notebook 01's `dataset_dir`, `make reproduce
   DATASET=DIR`), or a copy of a dataset placed in `data/doitpoms/` by hand (it has no
   scraper state `.scrape/`): validated with `dataset.load_records`, used as it is and never
   written to;
2. **existing** - a complete earlier scrape in `data/doitpoms/` (no network);
3. **scraped** - otherwise the library at `DOITPOMS_URL` (else the live site) is scraped into
   `data/doitpoms/`, resuming what an earlier run left there;
4. **sample** - only when the site cannot be reached: the embedded sample `data/sample/`,
   declared as an offline substitute (an error under STRICT=1).

The smoke profile scrapes only SMOKE_IDS into `build/doitpoms-smoke/`, so a partial scrape never
passes for the full library. Paths are recorded relative to the repository when inside it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from microqa import config, publishing
from microqa.data import dataset, doitpoms
from microqa.run import Run

SMOKE_IDS = "1-40"  # the smoke profile scrapes only these, into build/, never into data/
SOURCES = {
    "user": "user dataset",
    "existing": "complete earlier scrape",
    "scraped": "scraped now",
    "sample": "embedded sample (offline substitute)",
}


@dataclass
class DatasetChoice:
    """Which dataset this run uses and why (notebook 01 shows it; provenance records it)."""

    source: str  # a key of SOURCES
    dataset_dir: Path
    base_url: str
    n_records: int
    n_images: int
    failures: list[doitpoms.Failure] = field(default_factory=list)
    complete: bool = True
    reason: str = ""  # why this source: the sample's reason, the user folder's origin
    notes: dict[str, list] = field(default_factory=dict)  # dataset.DATASET_NOTES lists

    @property
    def path(self) -> str:
        """The folder as outputs name it (relative to the repository when inside it)."""
        return config.display_path(self.dataset_dir)

    @property
    def served_by(self) -> str:
        """Who answered the scrape, as a reader may be told it (provenance keeps base_url)."""
        if not self.base_url:
            return ""
        return "local mirror" if doitpoms.is_local_mirror(self.base_url) else "the site"

    def summary(self) -> dict[str, object]:
        return {
            "source": SOURCES[self.source],
            "dataset": self.path,
            "scraped_from": doitpoms.public_urls(self.base_url),
            "served_by": self.served_by,
            "n_records": self.n_records,
            "n_images": self.n_images,
            "n_failures": len(self.failures),
            "n_records_without_image": len(self.notes.get("missing_images", [])),
            "n_orphan_images": len(self.notes.get("orphan_images", [])),
            "complete": self.complete,
        }


def inspect_dataset(dataset_dir: Path | str) -> tuple[int, int, dict[str, list]]:
    """(records, records with a usable image, DATASET_NOTES lists) of a dataset folder;
    DatasetError when it cannot be used. Reads only."""
    records = dataset.load_records(dataset_dir, with_images_only=False)
    notes = {key: records.attrs[key] for key in dataset.DATASET_NOTES}
    n_records = len(records) - len(notes["empty_rows"])
    return n_records, int((records["image_path"] != "").sum()), notes


def is_user_copy(folder: Path) -> bool:
    """A dataset the scraper did not make: records.csv without the scraper's state folder."""
    return (folder / "records.csv").is_file() and not doitpoms.made_by_scraper(folder)


def resolve_dataset(
    run: Run,
    base_url: str = "",
    *,
    dataset_dir: Path | str = "",
    delay: float = doitpoms.DEFAULT_DELAY,
    ids: str = "",
    log: Callable[[str], None] | None = None,
) -> DatasetChoice:
    """Choose `run`'s dataset (see the module doc) and record the choice in its provenance
    (stage "data", which every later notebook's `Run` reads).

    The record is written only once the choice is made: a bad `dataset_dir` or a failed
    scrape leaves the previous record as it was."""
    chosen = run.profile
    run.begin_stage("data")  # a fresh record: no stale fallbacks from an earlier run
    wanted = ids or "discover"
    if dataset_dir:
        choice = _user(config.repo_path(dataset_dir), "named by the run's dataset_dir")
        wanted = "user"
    elif is_user_copy(config.scraped_dir()):
        choice = _user(config.scraped_dir(), "a dataset placed in data/doitpoms by hand")
        wanted = "user"
    else:
        base_url = doitpoms.normalise_base(base_url or config.doitpoms_url())
        if chosen.name == "smoke":
            target, ids = config.build_dir() / "doitpoms-smoke", ids or SMOKE_IDS
            wanted = ids
        else:
            target = config.scraped_dir()
        choice = _scrape_or_sample(run, target, base_url, ids, wanted, delay, log or _sparse_log)
    run.record_stage(
        "data",
        source=choice.source,
        dataset_dir=choice.path,
        base_url=choice.base_url,
        n_records=choice.n_records,
        n_images=choice.n_images,
        ids=wanted,
        complete=choice.complete,
        failures=[str(failure) for failure in choice.failures],
        **{key: len(value) for key, value in choice.notes.items()},
    )
    return choice


def _user(folder: Path, why: str) -> DatasetChoice:
    if not folder.is_dir():
        raise dataset.DatasetError(f"dataset folder {config.display_path(folder)} does not exist")
    n_records, n_images, notes = inspect_dataset(folder)
    if n_images == 0:
        raise dataset.DatasetError(
            f"{config.display_path(folder)}: none of its {n_records} records has an image in "
            "images/ (named NNNNNN.<ext> after micrograph_no)"
        )
    return DatasetChoice("user", folder, "", n_records, n_images, reason=why, notes=notes)


def _scrape_or_sample(run, target, base_url, ids, wanted, delay, log) -> DatasetChoice:
    done = doitpoms.completion(target)
    if done and done["ids"] == wanted:
        n_records, n_images, notes = inspect_dataset(target)
        return DatasetChoice("existing", target, done["base_url"], n_records, n_images, notes=notes)
    try:
        result = doitpoms.scrape(base_url, target, ids=ids or None, delay=delay, log=log)
    except doitpoms.SiteUnreachable as exc:
        return _sample_instead(run, str(exc), target)
    notes = inspect_dataset(target)[2]
    return DatasetChoice(
        "scraped",
        target,
        base_url,
        result.n_records,
        result.n_images,
        failures=result.failures,
        complete=result.complete,
        notes=notes,
    )


def _sparse_log(message: str) -> None:
    """Progress for notebooks: every failure, and one line per 50 ids."""
    number = re.match(r"id (\d+):", message)
    if "FAIL" in message or (number and int(number.group(1)) % 50 == 0):
        print(message, file=sys.stderr, flush=True)


def _sample_instead(run: Run, reason: str, target: Path) -> DatasetChoice:
    sample = config.sample_dir()
    if not (sample / "records.csv").is_file():
        raise doitpoms.ScrapeError(
            f"{reason}; and there is no embedded sample at {config.display_path(sample)}"
        )
    if doitpoms.made_by_scraper(target) and (target / "records.csv").is_file():
        reason += (
            f" (the partial scrape in {publishing.relative(target)} is kept; rerun to resume it)"
        )
    n_records, n_images, notes = inspect_dataset(sample)
    smaller = run.profile.sample_note()
    if smaller:
        smaller = f", with smaller side analyses unless a parameter sets them ({smaller})"
    run.substitute(
        "data",
        f"embedded sample {config.display_path(sample)} ({n_images} images) instead of the "
        f"full library{smaller}",
        reason,
    )
    return DatasetChoice("sample", sample, "", n_records, n_images, reason=reason, notes=notes)


# ----------------------------------------------------------------------------- tables


def summary_table(choice: DatasetChoice) -> pd.DataFrame:
    """One row: where the data came from and how much of it there is."""
    return pd.DataFrame([choice.summary()])


def failures_table(choice: DatasetChoice) -> pd.DataFrame:
    """The scrape's failed pages and images (empty for other sources)."""
    rows = [vars(failure) for failure in choice.failures]
    return pd.DataFrame(rows, columns=["id", "what", "url", "reason"])


def notes_table(choice: DatasetChoice) -> pd.DataFrame:
    """What concerns only some records: each listed once, with what it means."""
    rows = [
        {"item": str(item), "note": dataset.DATASET_NOTES[key]}
        for key, items in choice.notes.items()
        if key != "empty_rows"
        for item in items
    ]
    return pd.DataFrame(rows, columns=["item", "note"])


PREVIEW_COLUMNS = [
    "micrograph_no",
    "brief_description",
    "categories",
    "technique",
    "length_bar",
    "image_file",
    "image_format",
    "image_mode",
    "image_width",
    "image_height",
]


def preview(dataset_dir: Path | str, n: int = 5) -> pd.DataFrame:
    """The first `n` records of a dataset, the columns a reader checks first."""
    table = dataset.read_records_csv(Path(dataset_dir) / "records.csv")
    return table[[c for c in PREVIEW_COLUMNS if c in table.columns]].head(n)
