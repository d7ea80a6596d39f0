"""The DoITPoMS scraper: id discovery, record fetch + parse (lxml), image download, resume.

    python -m microqa scrape --base-url URL --out DIR [--ids A-B] [--delay S]

Layout written under DIR (README, "Data"; the same layout a user's own dataset has):
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
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from microqa import config
from microqa.data.dataset import FIELD_COLUMNS, IMAGE_COLUMNS, RECORD_COLUMNS  # noqa: F401 (API)
from microqa.data.doitpoms.fetch import (
    DEFAULT_BACKOFF,
    DEFAULT_DELAY,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Fetcher,
    FetchError,
    ScrapeError,
    SiteUnreachable,
)
from microqa.data.doitpoms.parse import (  # noqa: F401 (the scraper's API)
    IdRanges,
    ParsedRecord,
    inspect_image,
    normalise_text,
    parse_ids,
    parse_record,
)
from microqa.data.doitpoms.store import (  # noqa: F401 (the scraper's API)
    OUTPUT_COLUMNS,
    STATE_DIR,
    Failure,
    ScrapeResult,
    Store,
    completion,
    made_by_scraper,
    refuse_foreign,
)
from microqa.data.images import ImageInfo

RECORD_PAGE = "micrograph_record.php?id={id}"
PUBLIC_LIBRARY = config.DEFAULT_DOITPOMS_URL
PUBLIC_SITE = "https://www.doitpoms.ac.uk/"
# A local mirror (python -m microqa mirror) serves the library from this machine: outputs name
# the public library it serves instead (provenance keeps the address the run really used).
_LOOPBACK = r"https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\])(?::\d+)?/"
_LOOPBACK_LIBRARY = re.compile(_LOOPBACK + "miclib/?")
_LOOPBACK_ORIGIN = re.compile(_LOOPBACK)
IMAGE_PATH = "micrographs/large/{id:06d}.jpg"

# The mirror's longest run of missing ids between two records is 28 (ids 86-113 plus 118):
# stopping after 50 misses past the last record leaves a wide margin at little cost.
DEFAULT_MISSING_RUN = 50
MAX_PAGE_BYTES = 2 * 1024 * 1024
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# This many failed ids in a row means the site stopped answering: stop instead of probing on.
MAX_CONSECUTIVE_FAILURES = 10


# ----------------------------------------------------------------------------- the scrape


def is_local_mirror(url: str) -> bool:
    """True for a library served from this machine (a loopback address)."""
    return bool(_LOOPBACK_ORIGIN.match(url))


def public_urls(text: str) -> str:
    """`text` with a local mirror's URLs named as the public library's (its pages, robots.txt
    and images under the public site)."""
    return _LOOPBACK_ORIGIN.sub(PUBLIC_SITE, _LOOPBACK_LIBRARY.sub(PUBLIC_LIBRARY, text))


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
