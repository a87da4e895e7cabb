"""The uvicorn server compute-server runs: it ends live views before shutting down, and it
closes connections whose request headers do not arrive in time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class StreamClosingServer(uvicorn.Server):
    """uvicorn waits for every open response before it shuts down (and only then runs the app's
    lifespan shutdown), and a live view (SSE) never ends by itself: end them all first."""

    def __init__(self, config: uvicorn.Config, end_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.end_streams = end_streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.end_streams()
        await super().shutdown(sockets)


# -- a deadline for request headers ------------------------------------------------------------
#
# uvicorn times out a kept-alive connection only while it is silent between requests, and a body
# only through the app (RequestBodyGuard); a connection that sends part of a request line or of
# its headers and then stalls, or connects and sends nothing, is held open for ever: enough of
# them exhaust the file descriptors. These protocols give every request its own deadline for its
# headers, armed when the connection opens and again when a reply completes (the next request on
# a kept-alive connection), and closed with a 408 when it passes. A request whose headers are in
# is the app's from then on: the deadline does nothing while a request is being served.

HEADER_TIMEOUT_REPLY = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 26\r\nconnection: close\r\n\r\nrequest headers too slow\r\n"
)


class _HeaderDeadline:
    """The timer of one connection, for the protocol that owns it."""

    def __init__(self, protocol: HttpToolsProtocol | H11Protocol, timeout: float) -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        self.timer = self.protocol.loop.call_later(self.timeout, self._expired)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        transport, cycle = self.protocol.transport, self.protocol.cycle
        if transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # gone already, or its headers came in and the app has the request
        transport.write(HEADER_TIMEOUT_REPLY)
        transport.close()


class HttpToolsWithHeaderDeadline(HttpToolsProtocol):
    header_read_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_deadline = _HeaderDeadline(self, self.header_read_timeout)
        super().connection_made(transport)
        self.header_deadline.arm()

    def on_headers_complete(self) -> None:
        self.header_deadline.cancel()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.header_deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.cancel()
        super().connection_lost(exc)


class H11WithHeaderDeadline(H11Protocol):
    header_read_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_deadline = _HeaderDeadline(self, self.header_read_timeout)
        super().connection_made(transport)
        self.header_deadline.arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # also parses a pipelined request that was waiting
        if not self.transport.is_closing():
            self.header_deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.cancel()
        super().connection_lost(exc)


def http_protocol(timeout: float, http: Literal["httptools", "h11"] = "httptools") -> type[asyncio.Protocol]:
    """uvicorn's `http=` for compute-server: its HTTP parser with a `timeout` (seconds) on headers."""
    base = HttpToolsWithHeaderDeadline if http == "httptools" else H11WithHeaderDeadline
    return type(base.__name__, (base,), {"header_read_timeout": timeout})
