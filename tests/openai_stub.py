"""A protocol-level stub of an OpenAI-compatible chat server, on 127.0.0.1 (real HTTP).

It records every request it receives (path, headers, JSON body), answers deterministically
from the request (a hash of the prompt and the image picks the option letter), and can inject
failures (HTTP 500/429 for the next n requests), delays, and servers without logprobs.

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

from microqa.mirror import BackgroundServer

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
        port: int = 0,
    ):
        self.model = model
        self.delay_s = delay_s
        self.logprobs = logprobs
        self.top_letter_p = top_letter_p
        self.describe_text = describe_text
        self.choice_template = choice_template
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * n)

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

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
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
                                    "root": f"/weights/{stub.model}",
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
                            "headers": dict(self.headers),
                            "body": body,
                            "time": time.time(),
                        }
                    )
                    failure = stub._failures.pop(0) if stub._failures else None
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    if failure:
                        self._send(failure, {"error": {"message": "injected failure"}})
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
