"""The scraper's output folder: images, per-id state files, the compiled records.csv; and the
rule that it writes only into a folder it created (its `.scrape/` state)."""

from __future__ import annotations

import csv
import fcntl
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from microqa import config
from microqa.data.dataset import IMAGE_COLUMNS, RECORD_COLUMNS
from microqa.data.doitpoms.fetch import ScrapeError
from microqa.data.images import ImageInfo
from microqa.files import PARTIAL_SUFFIX, atomic_write_bytes

OUTPUT_COLUMNS = RECORD_COLUMNS + IMAGE_COLUMNS  # records.csv: the record's, then the file's
STATE_DIR = ".scrape"


def _json_bytes(payload: object) -> bytes:
    return (json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


@dataclass
class Failure:
    id: int
    what: str  # "page" or "image"
    url: str
    reason: str

    def __str__(self) -> str:
        return f"id {self.id} ({self.what}): {self.reason}"


@dataclass
class ScrapeResult:
    out_dir: Path
    n_records: int = 0
    n_images: int = 0
    n_missing: int = 0
    requests_made: int = 0
    failures: list[Failure] = field(default_factory=list)
    complete: bool = False
    last_id: int = 0


class Store:
    """The output directory: images, per-id state files, the compiled records.csv."""

    def __init__(self, out_dir: Path, base_url: str):
        refuse_foreign(out_dir)
        self.root = out_dir
        self.images = out_dir / "images"
        self.state = out_dir / STATE_DIR
        self.ids_dir = self.state / "ids"
        try:
            self.ids_dir.mkdir(parents=True, exist_ok=True)
            self.images.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.state / "lock", "a+b")  # noqa: SIM115 (held for the run)
        except OSError as exc:
            raise ScrapeError(f"cannot write to output directory {out_dir}: {exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScrapeError(f"another scrape is writing to {out_dir}") from None
        self._check_source(base_url)
        for leftover in self._partials():  # a killed run's half-written files
            leftover.unlink()

    def _check_source(self, base_url: str) -> None:
        source = self.state / "source.json"
        has_data = any(self.ids_dir.glob("*.json"))  # nothing saved yet: any URL may start
        if source.exists() and has_data:
            previous = json.loads(source.read_text(encoding="utf-8"))["base_url"]
            if previous != base_url:
                raise ScrapeError(
                    f"{self.root} holds a scrape of {previous}; use another --out for {base_url}"
                )
        else:
            atomic_write_bytes(source, _json_bytes({"base_url": base_url}))

    def _partials(self) -> Iterator[Path]:
        for folder in (self.root, self.images, self.state, self.ids_dir):
            yield from folder.glob(f".*{PARTIAL_SUFFIX}")

    def close(self) -> None:
        self._lock.close()

    def state_of(self, record_id: int) -> dict | None:
        """The saved state of an id; None when there is none (or it is damaged: refetch)."""
        try:
            return self._read_state(self.ids_dir / f"{record_id:06d}.json")
        except (FileNotFoundError, ScrapeError):
            return None

    @staticmethod
    def _read_state(path: Path) -> dict:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state["status"] == "record":
                state["row"]["micrograph_no"]  # noqa: B018 (a row must have its id)
            return state
        except (ValueError, KeyError, TypeError) as exc:
            raise ScrapeError(f"damaged state file {path}: {exc!r}") from None

    def save_state(self, record_id: int, payload: dict) -> None:
        atomic_write_bytes(self.ids_dir / f"{record_id:06d}.json", _json_bytes(payload))

    def save_image(self, record_id: int, data: bytes, info: ImageInfo) -> str:
        name = f"{record_id:06d}.{info.extension}"
        for stale in self.images.glob(f"{record_id:06d}.*"):  # never two files for one id
            if stale.name != name:
                stale.unlink()
        atomic_write_bytes(self.images / name, data)
        return f"images/{name}"

    def rows(self) -> list[dict]:
        rows = []
        for path in sorted(self.ids_dir.glob("*.json")):
            state = self._read_state(path)
            if state["status"] == "record":
                rows.append(state["row"])
        return sorted(rows, key=lambda row: int(row["micrograph_no"]))

    def compile(self) -> list[dict]:
        """records.csv from the state files alone (so it is the same after any resume)."""
        rows = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=OUTPUT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.root / "records.csv", buffer.getvalue().encode("utf-8"))
        return rows

    def mark_complete(self, payload: dict | None) -> None:
        marker = self.state / "complete.json"
        if payload is None:
            marker.unlink(missing_ok=True)
        else:
            atomic_write_bytes(marker, _json_bytes(payload))


def made_by_scraper(folder: Path | str) -> bool:
    """Whether the scraper created `folder` (its state folder is there)."""
    return (Path(folder) / STATE_DIR).is_dir()


def refuse_foreign(folder: Path) -> None:
    """ScrapeError unless `folder` is absent, empty, or one the scraper created."""
    if not folder.exists() or made_by_scraper(folder):
        return
    if not folder.is_dir():
        raise ScrapeError(f"--out {config.display_path(folder)} is a file, not a folder")
    if (folder / "records.csv").exists():
        raise ScrapeError(
            f"{config.display_path(folder)} holds a records.csv the scraper did not write (no "
            f"{STATE_DIR}/): it never writes into a dataset it did not create; choose another --out"
        )
    if any(folder.iterdir()):
        raise ScrapeError(
            f"{config.display_path(folder)} is not empty and was not created by the scraper (no "
            f"{STATE_DIR}/); choose a new or empty folder for --out"
        )


def completion(out_dir: Path | str) -> dict | None:
    """The completion record of a finished scrape in `out_dir`, or None."""
    marker = Path(out_dir) / STATE_DIR / "complete.json"
    return json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else None
