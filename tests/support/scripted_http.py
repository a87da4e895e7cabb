"""A real HTTP server that answers each path with what the test scripted: the hostile server a
client must survive (raw bytes, lying headers, endless bodies), on a thread of the test's process."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int = 200
    #: The body, or a function giving its chunks (sent as they come, until the client hangs up).
    body: bytes | Callable[[], Iterable[bytes]] = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Called when the request arrives, before anything is answered (to change the world mid-call).
    on_request: Callable[[], None] | None = None


class ScriptedServer:
    """`answers[path]` for each request (any method; the path without its query), else 404.

    HTTP/1.0: each answer ends when the connection closes, so a body needs no declared length
    (a `Content-Length` header is sent only when the test sets it, true or not).
    """

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        #: The answer to a path not in `answers`.
        self.otherwise = Answer(404, b'{"detail": "Not Found"}', {"Content-Type": "application/json"})
        #: (method, raw path with its query) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        #: Bytes of body sent per path: what the client took before it hung up.
        self.sent: dict[str, int] = {}
        #: The Date header of every answer (an HTTP date), when the test fixes the server's clock.
        self.date: str | None = None
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, name="scripted-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def json(self, path: str, document: Any, status: int = 200) -> None:
        """Answer `path` with `document` as JSON, non-ASCII and control characters left raw."""
        body = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
        self.answers[path] = Answer(status, body, {"Content-Type": "application/json"})

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = urlsplit(self.path).path
                answer = server.answers.get(path, server.otherwise)
                if answer.on_request is not None:
                    answer.on_request()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunks = [answer.body] if isinstance(answer.body, bytes) else answer.body()
                sent = 0
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:  # the client hung up: what a refusing client does
                    pass
                server.sent[path] = server.sent.get(path, 0) + sent

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def date_time_string(self, timestamp: float | None = None) -> str:
                return server.date or super().date_time_string(timestamp)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
