"""A protocol-level stub of an OpenAI-compatible chat server, on 127.0.0.1 (real HTTP).

It records every request it receives (path, headers, JSON body), answers deterministically
from the request (a hash of the prompt and the image picks the option letter), and can be
hostile: HTTP errors with or without Retry-After (`fail_next`), malformed 200 replies
(`garbage_next`: HTML, cut-off JSON, `{"choices": []}`, missing fields, NaN or missing
logprobs), intermittent garbage on every k-th request (`garbage_every`), delays, and servers
without logprobs.

    with OpenAIStub(delay_s=0.05) as stub:
        backend = OpenAIBackend("stub-vlm", base_url=stub.base_url)

Also runnable on its own for manual checks, from the repository root:
`python -m tests.openai_stub --port 8011`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from microqa.data.mirror import BackgroundServer

# Malformed replies with status 200: (content type, body bytes) from the good reply's JSON.
GARBAGE: dict[str, Any] = {
    "html": lambda good: ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "cut_json": lambda good: ("application/json", json.dumps(good).encode()[:40]),
    "empty_choices": lambda good: ("application/json", b'{"id": "x", "choices": []}'),
    "not_object": lambda good: ("application/json", b'["choices"]'),
    "no_message": lambda good: (
        "application/json",
        json.dumps({**good, "choices": [{"index": 0, "finish_reason": "stop"}]}).encode(),
    ),
    "no_logprobs": lambda good: (
        "application/json",
        json.dumps({**good, "choices": [{**good["choices"][0], "logprobs": None}]}).encode(),
    ),
    # Python's json writes NaN as the bare literal, as some servers do
    "nan_logprob": lambda good: (
        "application/json",
        json.dumps(_with_logprob(good, float("nan"))).encode(),
    ),
}


def _with_logprob(good: dict[str, Any], value: float) -> dict[str, Any]:
    """The good reply with every listed log-probability replaced by `value`."""
    bad = json.loads(json.dumps(good))
    for entry in (bad["choices"][0].get("logprobs") or {}).get("content") or []:
        entry["logprob"] = value
        for top in entry.get("top_logprobs", []):
            top["logprob"] = value
    return bad


OPTION = re.compile(r"(?<![A-Za-z0-9])([A-Z])\) ")


def offered_letters(prompt: str) -> list[str]:
    """The option letters a prompt offers ("A) ...", "B) ..."); A-D when none are visible."""
    letters = sorted(set(OPTION.findall(prompt)))
    return letters or ["A", "B", "C", "D"]


def request_text_and_image(body: dict[str, Any]) -> tuple[str, str]:
    """(user text, image data URL) of a chat request."""
    text, image = "", ""
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") != "user":
            continue
        if isinstance(content, str):
            text += content
            continue
        for part in content or []:
            if part.get("type") == "text":
                text += part.get("text", "")
            elif part.get("type") == "image_url":
                image = part["image_url"]["url"]
    return text, image


def deterministic_letter(body: dict[str, Any]) -> str:
    """The stub's answer: a letter picked by a hash of the prompt and the image."""
    text, image = request_text_and_image(body)
    letters = offered_letters(text)
    digest = hashlib.sha256((text + image).encode("utf-8")).digest()
    return letters[digest[0] % len(letters)]


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog: room for a client with hundreds in flight
    daemon_threads = True


class OpenAIStub(BackgroundServer):
    def __init__(
        self,
        *,
        model: str = "stub-vlm",
        delay_s: float = 0.0,
        logprobs: bool = True,
        top_letter_p: float = 0.6,
        describe_text: str = "A scanning electron micrograph (SEM) of a steel fracture surface.",
        choice_template: str = "The answer is {letter}.",
        garbage_every: int = 0,
        capacity: int | None = None,
        record_bodies: bool = True,
        root: str | None = None,
        port: int = 0,
    ):
        self.model = model
        self.root = root  # the weights /models names (default /weights/<model>)
        self.delay_s = delay_s
        self.logprobs = logprobs
        self.top_letter_p = top_letter_p
        self.describe_text = describe_text
        self.choice_template = choice_template
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.garbage_every = garbage_every  # every k-th chat request gets the next GARBAGE kind
        # at most this many requests are served at once (each for delay_s); the rest queue
        self._capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.record_bodies = record_bodies  # False: keep only path and time (benchmarks)
        self._failures: list[tuple[int | str, float | None]] = []
        self._n_chat = 0
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """The next n requests answer `status` (with a Retry-After header when given)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def garbage_next(self, n: int, kind: str) -> None:
        """The next n chat requests get the malformed 200 reply `kind` (a key of GARBAGE)."""
        if kind not in GARBAGE:
            raise ValueError(f"unknown garbage {kind!r}; known: {sorted(GARBAGE)}")
        with self._lock:
            self._failures.extend([(kind, None)] * n)

    def image_parts(self) -> list[str]:
        """The image data URL of every chat request, in arrival order."""
        return [request_text_and_image(body)[1] for body in self.chat_requests()]

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    # --- answers ------------------------------------------------------------------------------
    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        letter = deterministic_letter(body)
        text, _ = request_text_and_image(body)
        # the study's and the earlier study's instructions both end a multiple-choice prompt
        is_choice = text.rstrip().endswith(("Answer with the letter only.", "only one letter."))
        content = self.choice_template.format(letter=letter) if is_choice else self.describe_text
        if body.get("max_tokens") == 1:
            content = letter
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }
        if body.get("logprobs") and self.logprobs:
            letters = offered_letters(text)
            rest = (1.0 - self.top_letter_p - 0.05) / max(1, len(letters) - 1)
            top = [{"token": letter, "logprob": math.log(self.top_letter_p)}]
            # Other letters with a leading space, as many BPE vocabularies spell them.
            top += [{"token": f" {x}", "logprob": math.log(rest)} for x in letters if x != letter]
            top.append({"token": "The", "logprob": math.log(0.05)})
            top = top[: int(body.get("top_logprobs") or 0) or len(top)]
            choice["logprobs"] = {
                "content": [
                    {"token": content[:1], "logprob": top[0]["logprob"], "top_logprobs": top}
                ]
            }
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
        }

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(
                self,
                status: int,
                payload: dict[str, Any] | bytes,
                content_type: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": stub.model,
                                    "object": "model",
                                    "root": stub.root or f"/weights/{stub.model}",
                                }
                            ],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers) if stub.record_bodies else {},
                            "body": body if stub.record_bodies else {},
                            "time": time.time(),
                        }
                    )
                    failure, retry_after = stub._failures.pop(0) if stub._failures else (None, None)
                    if self.path.endswith("/chat/completions"):
                        stub._n_chat += 1
                        every = stub.garbage_every
                        if failure is None and every and stub._n_chat % every == 0:
                            kinds = sorted(GARBAGE)
                            failure = kinds[(stub._n_chat // every) % len(kinds)]
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                if stub._capacity:
                    stub._capacity.acquire()  # queue until the server has room
                try:
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    if isinstance(failure, int):
                        extra = {"Retry-After": f"{retry_after:g}"} if retry_after else {}
                        self._send(
                            failure, {"error": {"message": "injected failure"}}, headers=extra
                        )
                    elif failure:
                        content_type, data = GARBAGE[failure](stub.completion(body))
                        self._send(200, data, content_type)
                    elif not self.path.endswith("/chat/completions"):
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                    elif body.get("model") != stub.model:
                        self._send(
                            404,
                            {"error": {"message": f"model {body.get('model')!r} does not exist"}},
                        )
                    else:
                        self._send(200, stub.completion(body))
                finally:
                    if stub._capacity:
                        stub._capacity.release()
                    with stub._lock:
                        stub.in_flight -= 1

        return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--model", default="stub-vlm")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = OpenAIStub(model=args.model, delay_s=args.delay, port=args.port)
    print(f"stub OpenAI server on {server.base_url}", flush=True)
    server.httpd.serve_forever()
