"""The DoITPoMS scraper: id discovery, record fetch + parse (lxml), image download, resume.

    python -m microqa scrape --base-url URL --out DIR [--ids A-B] [--delay S]

Layout written under DIR (see GUIDE.md, "Data layout"):
  records.csv            one row per record found: the mirror's 18 columns, then IMAGE_COLUMNS
  images/NNNNNN.<ext>    the micrograph, named by id, extension from its decoded format
  .scrape/ids/NNNNNN.json  what is done for each probed id (a record row, or "missing")
  .scrape/source.json    the base URL this directory was scraped from
  .scrape/complete.json  present only after a run that ended with nothing failed

It writes only into a folder it created: an existing folder without its `.scrape/` state (a
user's dataset, any other files) is refused, never overwritten.

Resume without loss: every file is written to a temporary name and renamed into place, an id
counts as done only once its state file exists, and records.csv is compiled from the state
files alone. So a run killed at any moment and rerun ends with exactly the files of an
uninterrupted run, and a rerun of a finished scrape makes no requests at all.

Missing ids (HTTP 404, or a page without the record container) are not rows of records.csv;
they are remembered in .scrape/ids so discovery and resume agree. Field values are
whitespace-normalised: `&nbsp;` becomes a space, runs of whitespace (newlines too) one space.
The image URL is the one the record page links (an `<img>` under `micrographs/`; the site
links some GIFs as `.gif`), else the site's documented `micrographs/large/NNNNNN.jpg`.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import re
import sys
import time
import urllib.robotparser
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from lxml import html as lxml_html
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from microqa import config
from microqa.dataset import FIELD_COLUMNS, IMAGE_COLUMNS, RECORD_COLUMNS
from microqa.files import PARTIAL_SUFFIX, atomic_write_bytes
from microqa.images import ImageError, ImageInfo, inspect_bytes

OUTPUT_COLUMNS = RECORD_COLUMNS + IMAGE_COLUMNS  # records.csv: the record's, then the file's

RECORD_PAGE = "micrograph_record.php?id={id}"
IMAGE_PATH = "micrographs/large/{id:06d}.jpg"

# The mirror's longest run of missing ids between two records is 28 (ids 86-113 plus 118):
# stopping after 50 misses past the last record leaves a wide margin at little cost.
DEFAULT_MISSING_RUN = 50
DEFAULT_DELAY = 1.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5  # seconds; doubles on each retry (urllib3 Retry), capped at 30 s
DEFAULT_TIMEOUT = 30.0
MAX_PAGE_BYTES = 2 * 1024 * 1024
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# This many failed ids in a row means the site stopped answering: stop instead of probing on.
MAX_CONSECUTIVE_FAILURES = 10

STATE_DIR = ".scrape"

# Labels as the site writes them, normalised by _label_key (lower case, single spaces, no colon).
LABEL_ALIASES = {
    "micrograph no": "micrograph_no",
    "micrograph no.": "micrograph_no",
    "micrograph number": "micrograph_no",
    "keyword": "keywords",
    "category": "categories",
    "standard code": "standard_codes",
    "organization": "organisation",
    "further info": "further_information",
}


class ScrapeError(RuntimeError):
    """Bad input or an unusable output directory; the message names the input."""


class SiteUnreachable(ScrapeError):
    """The site could not be reached (or stopped answering); collected data is kept."""


class FetchError(RuntimeError):
    """One URL failed after every retry."""


# ----------------------------------------------------------------------------- parsing


def normalise_text(text: str) -> str:
    """`&nbsp;` -> space, every run of whitespace -> one space, trimmed."""
    return " ".join(text.replace("\xa0", " ").split())


def _label_key(text: str) -> str:
    return normalise_text(text).rstrip(":").strip().lower()


def _column_for(label: str) -> str | None:
    key = _label_key(label)
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    column = key.replace(" ", "_")
    return column if column in FIELD_COLUMNS or column == "micrograph_no" else None


def _own_text(element) -> str:
    """Text of an element without the text of dt/dd elements nested in it (malformed HTML)."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and child.tag.lower() in ("dt", "dd"):
            parts.append(child.tail or "")
            continue
        parts.append(_own_text(child) if isinstance(child.tag, str) else "")
        parts.append(child.tail or "")
    return "".join(parts)


@dataclass
class ParsedRecord:
    fields: dict[str, str]  # every FIELD_COLUMNS key, "" when the page does not show it
    shown_number: str  # the page's own "Micrograph No", "" when absent
    unknown_labels: list[str]
    image_src: str = ""  # the micrograph's <img src> as written on the page, "" when none


def _decode(body: bytes, content_type: str | None) -> str:
    """Bytes -> text: the charset the server declared, else UTF-8 (the site's encoding)."""
    match = re.search(r"charset=([\w.:-]+)", content_type or "", re.I)
    if match:
        try:
            return body.decode(match.group(1), errors="replace")
        except LookupError:
            pass  # an unknown charset name: fall through to UTF-8
    return body.decode("utf-8", errors="replace")


def parse_record(page: bytes | str, content_type: str | None = None) -> ParsedRecord | None:
    """Parse a record page; None when it holds no record (a missing id).

    The record is the first `div.col-md-8` holding `<dt>` labels, each followed by `<dd>`
    values. Label case, spacing, `&nbsp;` and a trailing colon do not matter; fields the page
    does not show are empty; a container without any field value is an empty record (None).
    """
    text = page if isinstance(page, str) else _decode(page, content_type)
    if not text.strip():
        return None
    document = lxml_html.document_fromstring(text)
    containers = document.xpath(
        '//div[contains(concat(" ", normalize-space(@class), " "), " col-md-8 ")][.//dt]'
    )
    if not containers:
        return None
    values: dict[str, list[str]] = {}
    unknown: list[str] = []
    column: str | None = None
    for element in containers[0].iter("dt", "dd"):
        if element.tag == "dt":
            label = _own_text(element)
            column = _column_for(label)
            if column is None and normalise_text(label):
                unknown.append(normalise_text(label))
        elif column is not None:
            values.setdefault(column, []).append(normalise_text(_own_text(element)))
    fields = {c: normalise_text(" ".join(values.get(c, []))) for c in FIELD_COLUMNS}
    if not any(fields.values()):
        return None
    shown = normalise_text(" ".join(values.get("micrograph_no", [])))
    sources = [src.strip() for src in containers[0].xpath(".//img/@src") if "micrographs/" in src]
    return ParsedRecord(fields, shown, unknown, sources[0] if sources else "")


def inspect_image(data: bytes, name: str = "image") -> ImageInfo:
    """Decode the whole image (so truncation shows) within the pixel limit; ImageError when
    it does not decode. The site serves GIF and BMP files under `.jpg` names: the true format
    names the saved file."""
    return inspect_bytes(data, name=name)


@dataclass(frozen=True)
class IdRanges:
    """Sorted, merged id ranges, iterated lazily (`1-100000000` costs two numbers, not a list)."""

    ranges: tuple[tuple[int, int], ...]

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdRanges):
            return self.ranges == other.ranges
        return isinstance(other, list | tuple) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in self.ranges)


def parse_ids(spec: str) -> IdRanges:
    """'1-40', '7', '1-10,77,90-95' -> sorted unique ids; ValueError naming the bad part."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ValueError(f"--ids {spec!r}: {part!r} is not an id or a range like 1-40")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if low < 1 or high < low:
            raise ValueError(f"--ids {spec!r}: range {part!r} must satisfy 1 <= first <= last")
        ranges.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return IdRanges(tuple(merged))


# ----------------------------------------------------------------------------- fetching


@dataclass
class Response:
    url: str
    status: int
    content_type: str
    body: bytes
    checked: object = None  # what `validate` returned for this body


class Fetcher:
    """One polite HTTP client: robots.txt, User-Agent, delay, retries, size cap, one host."""

    def __init__(
        self,
        base_url: str,
        *,
        delay: float = DEFAULT_DELAY,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        self.base_url = base_url
        self.origin = _origin(base_url)
        self.delay = delay
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.requests_made = 0
        self._last_request = 0.0
        self._robots: urllib.robotparser.RobotFileParser | None = None
        self.session = requests.Session()
        self.session.headers["User-Agent"] = config.USER_AGENT
        retry = Retry(
            total=retries,
            # A refused connection or unknown host rarely heals within seconds, and an
            # offline run should fall back quickly; longer outages are left to the resume.
            connect=min(retries, 2),
            read=retries,
            status=retries,
            other=0,
            redirect=0,  # redirects are followed by hand, to check each target's host
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            backoff_factor=backoff,
            backoff_max=30.0,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=1)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    # robots.txt is read lazily, before the first request for a page or image.
    def allowed(self, url: str) -> bool:
        if self._robots is None:
            self._robots = self._read_robots()
        return self._robots.can_fetch(config.USER_AGENT, url)

    def _read_robots(self) -> urllib.robotparser.RobotFileParser:
        robots_url = urljoin(self.base_url, "/robots.txt")
        parser = urllib.robotparser.RobotFileParser(robots_url)
        try:
            response = self.get(robots_url, max_bytes=512 * 1024, check_robots=False)
        except FetchError as exc:
            raise SiteUnreachable(f"cannot reach {self.base_url}: {exc}") from None
        if response.status == 200:
            parser.parse(_decode(response.body, response.content_type).splitlines())
        elif response.status in (401, 403):
            parser.disallow_all = True
        elif 400 <= response.status < 500:
            parser.allow_all = True  # no robots.txt: everything is allowed
        else:
            raise SiteUnreachable(
                f"cannot reach {self.base_url}: {robots_url} answered HTTP {response.status}"
            )
        crawl_delay = parser.crawl_delay(config.USER_AGENT)
        if crawl_delay:
            self.delay = max(self.delay, float(crawl_delay))
        return parser

    def _wait(self) -> None:
        pause = self._last_request + self.delay - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self._last_request = time.monotonic()

    def get(
        self,
        url: str,
        *,
        max_bytes: int,
        check_robots: bool = True,
        validate: Callable[[bytes], object] | None = None,
    ) -> Response:
        """GET a URL on the base host; retries (urllib3) cover 5xx, timeouts and refused
        connections; a broken body or one `validate` rejects is fetched again with the same
        backoff. Raises FetchError once every try failed."""
        if check_robots and not self.allowed(url):
            raise FetchError(f"{url} is disallowed by robots.txt")
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff * 2**attempt))
            response = self._get_once(url, max_bytes)  # FetchError: retries already spent
            if isinstance(response, Response):
                if response.status != 200 or validate is None:
                    return response
                try:
                    response.checked = validate(response.body)
                    return response
                except ImageError as exc:
                    last_error = str(exc)
            else:
                last_error = response
        raise FetchError(f"{url}: {last_error} (after {self.retries + 1} tries)")

    def _get_once(self, url: str, max_bytes: int) -> Response | str:
        """One request (urllib3 retries inside it). A str is a body error worth a retry."""
        for _hop in range(6):
            if _origin(url) != self.origin:
                raise FetchError(f"refusing {url}: not on {self.origin}")
            self._wait()
            self.requests_made += 1
            try:
                raw = self.session.get(
                    url, stream=True, timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                raise FetchError(f"{url}: {_reason(exc)}") from None
            with raw:
                if raw.is_redirect and raw.headers.get("Location"):
                    url = urljoin(url, raw.headers["Location"])
                    continue
                declared = raw.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"{url}: body of {declared} bytes exceeds {max_bytes}")
                try:
                    body = _read_capped(raw, max_bytes)  # FetchError past the cap: no retry
                except (requests.RequestException, OSError) as exc:
                    return f"broken body ({_reason(exc)})"
                if raw.status_code >= 500:
                    raise FetchError(f"{url}: HTTP {raw.status_code} after {self.retries} retries")
                return Response(url, raw.status_code, raw.headers.get("Content-Type", ""), body)
        raise FetchError(f"{url}: too many redirects")


def _read_capped(raw: requests.Response, max_bytes: int) -> bytes:
    chunks, size = [], 0
    for chunk in raw.iter_content(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{raw.url}: body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 exception chain ("[Errno 111] Connection
    refused", "Read timed out", ...)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        text = errno.group(0)
    elif "Caused by " in text:
        text = text.split("Caused by ", 1)[1]
    return f"{type(exc).__name__}: {text.strip(' ()')[:200]}"


# ----------------------------------------------------------------------------- files


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


# ----------------------------------------------------------------------------- the scrape


def normalise_base(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScrapeError(f"--base-url {base_url!r} is not an http(s) URL")
    return base_url if base_url.endswith("/") else base_url + "/"


def scrape(
    base_url: str,
    out_dir: Path | str,
    *,
    ids: list[int] | IdRanges | str | None = None,
    delay: float = DEFAULT_DELAY,
    missing_run: int = DEFAULT_MISSING_RUN,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    log: Callable[[str], None] | None = None,
) -> ScrapeResult:
    """Scrape `ids` (a list, a spec like "1-40", or None: discover) into `out_dir`, resuming
    whatever an earlier run there left. Raises ScrapeError for bad input and SiteUnreachable
    when the site does not answer; every record fetched before that stays saved."""
    base_url = normalise_base(base_url)
    ids_spec = ids if isinstance(ids, str) else None
    if isinstance(ids, str):
        try:
            ids = parse_ids(ids)
        except ValueError as exc:
            raise ScrapeError(str(exc)) from None
    if missing_run < 1:
        raise ScrapeError(f"missing run must be at least 1, not {missing_run}")
    say = log or (lambda message: None)
    store = Store(Path(out_dir), base_url)
    fetcher = Fetcher(base_url, delay=delay, retries=retries, backoff=backoff, timeout=timeout)
    result = ScrapeResult(out_dir=Path(out_dir))
    try:
        store.mark_complete(None)
        last_found, consecutive_failures = 0, 0
        for record_id in _id_sequence(ids):
            if ids is None and record_id - last_found > missing_run:
                break
            result.last_id = record_id
            state = store.state_of(record_id)
            if state is None or _needs_retry(state):
                try:
                    state = _scrape_one(record_id, fetcher, store, result, say)
                except FetchError as exc:
                    page_url = urljoin(base_url, RECORD_PAGE.format(id=record_id))
                    result.failures.append(Failure(record_id, "page", page_url, str(exc)))
                    say(f"id {record_id}: FAILED: {exc}")
                    consecutive_failures += 1
                    if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                        raise SiteUnreachable(
                            f"{base_url} stopped answering: {consecutive_failures} ids in a row "
                            f"failed, the last with: {exc}"
                        ) from None
                    continue
            consecutive_failures = 0
            if state["status"] == "record":
                last_found = record_id
                result.n_records += 1
                if state["row"]["image_file"]:
                    result.n_images += 1
                else:
                    row = state["row"]
                    result.failures.append(
                        Failure(record_id, "image", row["image_url"], row["image_error"])
                    )
            else:
                result.n_missing += 1
        result.complete = not result.failures
        if result.complete:
            store.mark_complete(
                {
                    "base_url": base_url,
                    "ids": ids_spec or ("discover" if ids is None else _spec_of(ids)),
                    "missing_run": missing_run if ids is None else None,
                    "n_records": result.n_records,
                    "n_images": result.n_images,
                    "n_missing": result.n_missing,
                }
            )
    finally:
        store.compile()
        result.requests_made = fetcher.requests_made
        fetcher.close()
        store.close()
    return result


def _id_sequence(ids: list[int] | IdRanges | None) -> Iterator[int]:
    if ids is not None:
        yield from ids
        return
    record_id = 1
    while True:  # discovery: the caller stops after a run of missing ids
        yield record_id
        record_id += 1


def _spec_of(ids: list[int] | IdRanges) -> str:
    return str(ids) if isinstance(ids, IdRanges) else ",".join(str(i) for i in ids)


def _needs_retry(state: dict) -> bool:
    """A record whose image failed is fetched again on the next run."""
    return state["status"] == "record" and bool(state["row"].get("image_error"))


def _scrape_one(record_id: int, fetcher: Fetcher, store: Store, result: ScrapeResult, say) -> dict:
    """Fetch, parse and save one id; returns its saved state. FetchError: page failed."""
    page_url = urljoin(fetcher.base_url, RECORD_PAGE.format(id=record_id))
    page = fetcher.get(page_url, max_bytes=MAX_PAGE_BYTES)
    parsed = None
    if page.status == 200:
        parsed = parse_record(page.body, page.content_type)
    elif page.status not in (404, 410):
        raise FetchError(f"{page_url}: HTTP {page.status}")
    if parsed is None:
        why = f"HTTP {page.status}" if page.status != 200 else "no record on the page"
        state = {"id": record_id, "status": "missing", "reason": why}
        store.save_state(record_id, state)
        say(f"id {record_id}: missing ({why})")
        return state
    shown_digits = re.sub(r"\D", "", parsed.shown_number)
    if shown_digits and int(shown_digits) != record_id:
        raise FetchError(f"{page_url} shows micrograph {parsed.shown_number!r}")
    for label in parsed.unknown_labels:
        say(f"id {record_id}: ignoring unknown label {label!r}")
    image_url = urljoin(page_url, parsed.image_src or IMAGE_PATH.format(id=record_id))
    row = {"micrograph_no": str(record_id), **parsed.fields}
    row.update(image_url=image_url, page_url=page_url)
    row.update({column: "" for column in IMAGE_COLUMNS})
    try:
        # FetchError names the URL; the reason starts "the body: ..."
        image = fetcher.get(
            image_url,
            max_bytes=MAX_IMAGE_BYTES,
            validate=lambda body: inspect_image(body, name="the body"),
        )
        if image.status != 200:
            raise FetchError(f"{image_url}: HTTP {image.status}")
        info: ImageInfo = image.checked  # what inspect_image returned while fetching
        row.update(
            image_file=store.save_image(record_id, image.body, info),
            image_sha256=info.sha256,
            image_width=str(info.width),
            image_height=str(info.height),
            image_format=info.format,
            image_mode=info.mode,
        )
        say(f"id {record_id}: saved {row['image_file']}")
    except FetchError as exc:
        row["image_error"] = str(exc)
        say(f"id {record_id}: record saved, IMAGE FAILED: {exc}")
    state = {"id": record_id, "status": "record", "row": row}
    store.save_state(record_id, state)
    return state


# ----------------------------------------------------------------------------- CLI


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default=config.DEFAULT_DOITPOMS_URL,
        help="the library's base URL (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument(
        "--ids", default=None, help="ids to fetch, e.g. 1-40 or 1-10,77 (default: discover)"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=DEFAULT_DELAY,
        help="seconds between requests (default: %(default)s)",
    )
    parser.add_argument(
        "--missing-run",
        type=int,
        default=DEFAULT_MISSING_RUN,
        help="discovery stops after this many missing ids in a row past the "
        "last record (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="retries per URL (default: %(default)s)",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=DEFAULT_BACKOFF,
        help="backoff factor in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a server (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-id progress lines")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0: everything reachable saved; 1: some records failed (listed); 2: bad input;
    3: the site is unreachable."""
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if args.delay < 0 or args.retries < 0 or args.timeout <= 0:
        print("error: --delay and --retries must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        result = scrape(
            args.base_url,
            args.out,
            ids=args.ids,
            delay=args.delay,
            missing_run=args.missing_run,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            log=log,
        )
    except SiteUnreachable as exc:
        print(f"error: {exc} (data collected so far is kept in {args.out})", file=sys.stderr)
        return 3
    except ScrapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.n_records} records, {result.n_images} images, {result.n_missing} missing ids "
        f"(last id probed {result.last_id}), {result.requests_made} requests -> {args.out}"
    )
    if result.failures:
        print(
            f"{len(result.failures)} failed (rerun the same command to retry them):",
            file=sys.stderr,
        )
        for failure in result.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
