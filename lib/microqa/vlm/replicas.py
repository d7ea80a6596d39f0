"""Several replicas of one OpenAI-compatible server: which replica answers which image.

Every question about one image goes to ONE replica, so the image's prefix (vision encoding and
image tokens) is computed once and stays in that replica's prefix cache. The replica is chosen
by rendezvous (highest-random-weight) hashing of the image's sha256 over the live replicas:
stable across runs and processes, and removing a replica moves only the images it had (each
other image keeps its highest-scoring replica). A replica that fails (connection errors, 5xx
after the client's retries) is taken out while others remain; its images are re-routed.

`parse_urls` reads what `--base-url` takes: one or more URLs, comma-separated or repeated, or a
file listing them (one per line, `#` comments). `public_url` is how a URL is recorded in
provenance: without user, password, query or fragment.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def parse_urls(values: str | Iterable[str] | None) -> list[str]:
    """The replica URLs named by `values` (URLs, comma lists, or files listing URLs), in order,
    each once, without a trailing slash. Raises ValueError naming what is not a URL."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    urls: list[str] = []
    for value in values:
        for part in (p.strip() for p in str(value).split(",")):
            if not part:
                continue
            if not part.startswith(("http://", "https://")) and Path(part).is_file():
                lines = Path(part).read_text(encoding="utf-8").splitlines()
                urls += parse_urls([line.split("#", 1)[0] for line in lines])
                continue
            if not part.startswith(("http://", "https://")) or not urlsplit(part).netloc:
                raise ValueError(
                    f"--base-url takes http(s) URLs or a file listing them; got {part!r}"
                )
            urls.append(part.rstrip("/"))
    return list(dict.fromkeys(urls))


def public_url(url: str) -> str:
    """`url` as provenance may record it: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _weight(url: str, key: str) -> bytes:
    return hashlib.sha256(f"{url}\x1f{key}".encode()).digest()


def rendezvous(key: str, urls: Sequence[str]) -> str:
    """The replica (one of `urls`) that image `key` goes to: the highest hash of (url, key)."""
    if not urls:
        raise ValueError("no replica left to send to")
    return max(urls, key=lambda url: _weight(url, key))


class Replicas:
    """The live replicas of a run; thread-safe."""

    def __init__(self, urls: Sequence[str]):
        if not urls:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000/v1")
        self.urls = list(urls)
        self.taken_out: dict[str, str] = {}  # url -> why
        self._lock = threading.Lock()

    @property
    def live(self) -> list[str]:
        with self._lock:
            return [u for u in self.urls if u not in self.taken_out]

    def route(self, key: str) -> str:
        return rendezvous(key, self.live)

    def take_out(self, url: str, reason: str) -> bool:
        """Take `url` out unless it is the last live replica (nowhere to re-route); returns
        whether it was taken out."""
        with self._lock:
            live = [u for u in self.urls if u not in self.taken_out]
            if url not in live or len(live) == 1:
                return False
            self.taken_out[url] = reason
            return True

    def provenance(self) -> dict[str, object]:
        return {
            "replicas": [public_url(u) for u in self.urls],
            "taken_out": {public_url(u): why for u, why in self.taken_out.items()},
        }
