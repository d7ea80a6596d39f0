"""Start/stop and `with` support for the tests' local HTTP servers (mirror site, OpenAI stub)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


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
