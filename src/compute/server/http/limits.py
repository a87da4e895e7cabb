"""Request bodies are bounded while they stream: in size (413) and in idle time (408).

`RequestBodyGuard` is plain ASGI middleware around the app. It counts the bytes of each request
body as the server hands them over, so a body without Content-Length (chunked) or with a false
one is refused as soon as it passes the limit, before Starlette spools it to disk; and a body
that sends nothing for `idle_timeout` seconds is answered 408. Either way the reply says
`Connection: close`, so the server drops the connection and its file descriptor, and the app
sees the client as gone (`http.disconnect`): what it had spooled is closed and deleted.

Bodies in flight are also counted: each may hold two files (the spooled body, the stored upload)
besides its connection, so past `max_uploads` at once (the descriptor budget's share) a new
request with a body is answered 503 with `Retry-After` before any of it is read. 1,100 stalled
uploads took every descriptor, and `GET /` went unanswered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT: Message = {"type": "http.disconnect"}


class RequestBodyGuard:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, idle_timeout: float | None, max_uploads: int | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout or None
        self.max_uploads = max_uploads
        #: Requests with a body being received or handled now.
        self.uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            # Refused before a byte of the body is read.
            await _reply(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
            return
        if not _has_body(scope, declared):
            await _Guarded(self, receive, send).run(scope)
            return
        if self.max_uploads is not None and self.uploads >= self.max_uploads:
            # Closed with the reply, freeing the descriptor. A small body is read first (for a
            # second at most), or closing with it unread would reset the connection before the
            # client read the 503; a large one still arriving meets that reset.
            if declared is not None and declared <= DRAIN_BYTES:
                await _drain(receive, DRAIN_SECONDS)
            await _reply(
                send,
                503,
                f"too many uploads in progress ({self.max_uploads}); retry shortly",
                {b"retry-after": b"5"},
            )
            return
        self.uploads += 1
        try:
            await _Guarded(self, receive, send).run(scope)
        finally:
            self.uploads -= 1


class _Guarded:
    """One request: its body counted and timed, and the app's reply dropped once we answered."""

    def __init__(self, guard: RequestBodyGuard, receive: Receive, send: Send) -> None:
        self.guard = guard
        self._receive = receive
        self._send = send
        self.received = 0
        self.body_done = False
        self.response_started = False
        self.answered = False

    async def run(self, scope: Scope) -> None:
        await self.guard.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.answered:
            return DISCONNECT
        if self.body_done:
            # Later calls only wait for the client to leave (streaming replies): no timeout.
            return await self._receive()
        timeout = self.guard.idle_timeout
        try:
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                message = await self._receive()
        except TimeoutError:
            await self._refuse(408, f"request body stalled: nothing received for {timeout:g} s")
            return DISCONNECT
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.max_body_bytes:
                await self._refuse(
                    413, f"request body exceeds the limit of {self.guard.max_body_bytes} bytes"
                )
                return DISCONNECT
            self.body_done = not message.get("more_body", False)
        else:
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the app's answer to the disconnect it was shown goes nowhere
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _refuse(self, status: int, detail: str) -> None:
        self.answered = True
        if not self.response_started:  # otherwise the closing connection is all we can say
            await _reply(self._send, status, detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            if not value.isdigit():
                return None  # the HTTP server refuses it; the streaming count still applies
            return int(value) if len(value) <= 18 else 10**18  # int() refuses 4,300+ digits
    return None


#: A refused body up to this size is read (and dropped) before the reply, for DRAIN_SECONDS at most.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0


async def _drain(receive: Receive, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


def _has_body(scope: Scope, declared: int | None) -> bool:
    if declared is not None:
        return declared > 0
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


async def _reply(send: Send, status: int, detail: str, extra: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, *(extra or {}).items()]}
    )
    await send({"type": "http.response.body", "body": body})
