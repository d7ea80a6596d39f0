"""One polite HTTP client for the site: robots.txt, User-Agent, delay, retries with backoff,
a size cap, one host (redirects checked by hand)."""

from __future__ import annotations

import re
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from microqa import config
from microqa.data.doitpoms.parse import decode_text
from microqa.data.images import ImageError

DEFAULT_DELAY = 1.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5  # seconds; doubles on each retry (urllib3 Retry), capped at 30 s
DEFAULT_TIMEOUT = 30.0


class ScrapeError(RuntimeError):
    """Bad input or an unusable output directory; the message names the input."""


class SiteUnreachable(ScrapeError):
    """The site could not be reached (or stopped answering); collected data is kept."""


class FetchError(RuntimeError):
    """One URL failed after every retry."""


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
            parser.parse(decode_text(response.body, response.content_type).splitlines())
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
