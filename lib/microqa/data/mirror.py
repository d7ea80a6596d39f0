"""A local stand-in for the DoITPoMS Micrograph Library, served over real HTTP on 127.0.0.1.

Renders record pages in the site's layout (`div.col-md-8` > `<dl>` of `<dt>`/`<dd>`, UTF-8,
`&nbsp;` in multi-valued fields) from a dataset folder (records.csv + images/NNNNNN.<ext>),
serves the images as-is under `micrographs/large/NNNNNN.jpg` (and under the `.gif` name a
page may link) with the site's `image/jpeg` content type whatever their true format, and a
robots.txt. Users and the tests scrape it as they would the site:

  python -m microqa mirror --data ../shared/doitpoms --port 8765
  make reproduce DOITPOMS_URL=http://127.0.0.1:8765/miclib/

Ids with a row of empty fields get a page without the record container (as the site does
for ids with no micrograph); ids without any row answer 404. Faults are switched on with
rates; each request's fate is a function of (seed, path, how often that path was asked), so
runs are repeatable whatever the timing, and `max_faults` caps the faults per path so a
patient client always gets through. Ids in `fail_ids` always answer 500; images of
`corrupt_ids` are always served cut in half (with a matching Content-Length).
"""

from __future__ import annotations

import argparse
import html
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

from microqa.data import images
from microqa.data.dataset import read_records_csv


class BackgroundServer:
    """Serves `self.httpd` (set by the subclass) on a daemon thread."""

    httpd: ThreadingHTTPServer

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


LABELS = [  # column -> label, in the site's order
    ("micrograph_no", "Micrograph No"),
    ("brief_description", "Brief description"),
    ("keywords", "Keywords"),
    ("categories", "Categories"),
    ("system", "System"),
    ("composition", "Composition"),
    ("standard_codes", "Standard codes"),
    ("reaction", "Reaction"),
    ("processing", "Processing"),
    ("applications", "Applications"),
    ("sample_preparation", "Sample preparation"),
    ("technique", "Technique"),
    ("length_bar", "Length bar"),
    ("further_information", "Further information"),
    ("contributor", "Contributor"),
    ("organisation", "Organisation"),
]
MULTI_VALUED = ("keywords", "categories")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>DoITPoMS - Micrograph Library - {title}</title></head>
<body>
<nav class="navbar"><a href="index.php">Micrograph Library</a> <a href="browse.php">Browse</a></nav>
<div class="container"><div class="row">
<div class="col-md-4"><h3>Search</h3><dl><dd>Search the library by keyword</dd></dl></div>
{content}
</div></div>
<footer><p>&copy; University of Cambridge</p></footer>
</body>
</html>
"""


@dataclass
class Faults:
    """Seeded fault switches; rates are probabilities per request."""

    seed: int = 0
    error_rate: float = 0.0  # answer 500 or 503
    slow_rate: float = 0.0  # wait `slow_seconds` before answering
    slow_seconds: float = 2.0
    truncate_rate: float = 0.0  # send half the body, then close (Content-Length is the full size)
    malformed_rate: float = 0.0  # record pages in messy (but still readable) HTML
    wrong_type_rate: float = 0.0  # a wrong Content-Type header
    max_faults: int = 2  # per path; later requests for it are answered normally
    fail_ids: set[int] = field(default_factory=set)
    corrupt_ids: set[int] = field(default_factory=set)

    def roll(self, path: str, nth: int, kind: str) -> float:
        return random.Random(f"{self.seed}:{path}:{nth}:{kind}").random()


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    truncate: bool = False  # send half the body, then close
    location: str | None = None


IMAGE_NAME = "micrographs/large/{:06d}.jpg"
NOT_FOUND = Answer(404, "text/html", b"<html><body>Not found</body></html>")


class Mirror:
    """The records and images of a mirror directory."""

    def __init__(self, mirror_dir: Path | str):
        self.dir = Path(mirror_dir)
        table = read_records_csv(self.dir / "records.csv")  # DatasetError: one line, named
        self.rows = {int(row["micrograph_no"]): row for row in table.to_dict("records")}

    def image_path(self, record_id: int) -> Path | None:
        return images.find_image(self.dir, record_id)


def _value_html(column: str, value: str, messy: bool) -> str:
    text = html.escape(value, quote=False).replace("\xa0", "&nbsp;")
    if column in MULTI_VALUED and messy:  # the site separates values with ",&nbsp;"
        text = ",&nbsp;".join(text.split(","))
    return text.replace("μ", "&mu;") if messy else text


def render_record(record_id: int, row: dict | None, *, messy: bool = False) -> str:
    """The record page of one id (no container when the row is empty or absent)."""
    if row is None or not any(row.get(column) for column, _ in LABELS[1:]):
        content = '<div class="col-md-8 alert"><p>No micrograph found.</p></div>'
        return PAGE.format(title="not found", content=content)
    items = []
    for column, label in LABELS:
        value = str(record_id) if column == "micrograph_no" else row.get(column, "")
        if not value:
            continue  # the site leaves out empty fields
        if messy:  # odd case, stray spaces, nbsp and colons, unclosed tags, comments
            label = f"  {label.upper()}&nbsp;: " if len(items) % 2 else f"{label.lower()}:"
            items.append(f"<DT>{label}<!-- label --><DD><span>{_value_html(column, value, True)}")
        else:
            items.append(f"<dt>{label}</dt>\n<dd>{_value_html(column, value, False)}</dd>")
    # The site links some images under their true extension (.gif); the mirror's image_url
    # keeps that link, and the server answers it as well as the .jpg name.
    src = (row.get("image_url") or "").rsplit("/miclib/", 1)[-1] or IMAGE_NAME.format(record_id)
    image = (
        '<img src="images/licence-by-nc-sa.png" alt="licence">'
        f'<img src="{html.escape(src)}" alt="micrograph {record_id}">'
    )
    if messy:
        content = f'<DIV CLASS="record col-md-8">{image}<dl class=dl-horizontal>{"".join(items)}'
    else:
        body = "\n".join(items)
        content = (
            f'<div class="col-md-8">\n{image}\n<dl class="dl-horizontal">\n{body}\n</dl>\n</div>'
        )
    return PAGE.format(title=f"Micrograph {record_id}", content=content)


class MirrorServer(BackgroundServer):
    """The server; use as a context manager or call start()/stop(). `requests` logs
    (monotonic time, path, status, user agent) for every answer."""

    def __init__(
        self,
        mirror_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        robots: str = "User-agent: *\nDisallow: /private/\n",
        prefix: str = "/miclib/",
        redirects: dict[str, str] | None = None,
    ):
        self.mirror = Mirror(mirror_dir)
        self.faults = faults or Faults()
        self.robots = robots
        self.prefix = prefix
        self.redirects = redirects or {}  # request path -> Location of a 302 answer
        self.requests: list[tuple[float, str, int, str]] = []
        self._seen: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()  # fault kind -> how often it fired
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def count(self, pattern: str) -> int:
        """How many requests had a path matching the regular expression `pattern`."""
        return sum(1 for _, path, _, _ in self.requests if re.search(pattern, path))

    # A fault fires when its roll is under its rate, until max_faults for that path.
    def _fault(self, path: str, nth: int, kind: str, rate: float) -> bool:
        if rate <= 0 or self.faults.roll(path, nth, kind) >= rate:
            return False
        with self._lock:
            if self._faulted[path] >= self.faults.max_faults:
                return False
            self._faulted[path] += 1
            self.fired[kind] += 1
        return True

    def _answer(self, raw_path: str) -> Answer:
        with self._lock:
            nth = self._seen[raw_path]
            self._seen[raw_path] += 1
        f = self.faults
        parts = urlsplit(raw_path)
        if raw_path in self.redirects:
            return Answer(302, "text/html", b"", location=self.redirects[raw_path])
        if parts.path == "/robots.txt":
            return Answer(200, "text/plain; charset=utf-8", self.robots.encode())
        if self._fault(raw_path, nth, "slow", f.slow_rate):
            time.sleep(f.slow_seconds)
        if self._fault(raw_path, nth, "error", f.error_rate):
            status = 500 if f.roll(raw_path, nth, "which") < 0.5 else 503
            return Answer(status, "text/html", b"<html><body>Server error</body></html>")
        if not parts.path.startswith(self.prefix):
            return NOT_FOUND
        local = parts.path[len(self.prefix) :]
        wrong_type = self._fault(raw_path, nth, "type", f.wrong_type_rate)
        truncate = self._fault(raw_path, nth, "truncate", f.truncate_rate)
        if local in ("micrograph_record.php", "full_record.php"):
            query = parse_qs(parts.query).get("id", [""])[0]
            if not query.isdigit():
                return Answer(404, "text/html", b"<html><body>Bad id</body></html>")
            record_id = int(query)
            if record_id in f.fail_ids:
                return Answer(500, "text/html", b"<html><body>Server error</body></html>")
            if record_id not in self.mirror.rows:
                return NOT_FOUND
            messy = self._fault(raw_path, nth, "malformed", f.malformed_rate)
            page = render_record(record_id, self.mirror.rows[record_id], messy=messy)
            # A wrong type drops the charset too; the page still declares it in a meta tag.
            kind = "application/octet-stream" if wrong_type else "text/html; charset=utf-8"
            return Answer(200, kind, page.encode("utf-8"), truncate)
        match = re.fullmatch(r"micrographs/large/(\d{6})\.(jpg|gif|bmp|png)", local)
        if match:
            record_id = int(match.group(1))
            path = self.mirror.image_path(record_id)
            if path is None:
                return NOT_FOUND
            data = path.read_bytes()
            if record_id in f.corrupt_ids:
                data = data[: len(data) // 2]
            return Answer(200, "text/html" if wrong_type else "image/jpeg", data, truncate)
        return NOT_FOUND

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to every keep-alive answer.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self):  # noqa: N802 (http.server's name)
                answer = server._answer(self.path)
                server.requests.append(
                    (time.monotonic(), self.path, answer.status, self.headers.get("User-Agent", ""))
                )
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                if answer.location:
                    self.send_header("Location", answer.location)
                if answer.truncate:
                    self.send_header("Connection", "close")
                self.end_headers()
                body = answer.body
                self.wfile.write(body[: len(body) // 2] if answer.truncate else body)
                if answer.truncate:
                    self.close_connection = True

            def log_message(self, format, *args):  # noqa: A002 (quiet; see .requests)
                pass

        return Handler


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        "--mirror",
        dest="data",
        required=True,
        type=Path,
        help="dataset folder to serve (records.csv, images/), e.g. ../shared/doitpoms",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault switches")
    for name in ("error", "slow", "truncate", "malformed", "wrong-type"):
        parser.add_argument(
            f"--{name}-rate", type=float, default=0.0, help="fault rate per request (testing)"
        )
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--max-faults", type=int, default=2, help="faults per path at most")


def run_cli(args: argparse.Namespace) -> int:
    """Serve until interrupted. Bad folders and busy ports are one-line errors (exit 2)."""
    faults = Faults(
        seed=args.seed,
        error_rate=args.error_rate,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds,
        truncate_rate=args.truncate_rate,
        malformed_rate=args.malformed_rate,
        wrong_type_rate=args.wrong_type_rate,
        max_faults=args.max_faults,
    )
    try:
        server = MirrorServer(args.data, host=args.host, port=args.port, faults=faults)
    except OSError as exc:
        raise OSError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving {args.data} at {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
