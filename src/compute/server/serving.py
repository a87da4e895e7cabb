"""The uvicorn server compute-server runs: it ends live views before shutting down, closes
connections whose request headers do not arrive in time, cuts connections whose client takes
no data for `send_timeout`, answers connections past the descriptor budget's share 503, and
leaves a startup error the app could state to compute-server rather than to a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any, Literal, cast

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from compute.logs import LogLimiter

log = logging.getLogger(__name__)
limited = LogLimiter(log)


class StreamClosingServer(uvicorn.Server):
    """uvicorn waits for every open response before it shuts down (and only then runs the app's
    lifespan shutdown), and a live view (SSE) never ends by itself: end them all first."""

    def __init__(self, config: uvicorn.Config, end_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.end_streams = end_streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.end_streams()
        await super().shutdown(sockets)


def stated_startup_errors(app: FastAPI) -> ASGIApp:
    """`app` for uvicorn, but a startup that fails for a reason the app recorded in
    `app.state.startup_error` (create_app's lifespan: a ComputeError or an OSError) is reported
    to uvicorn without Starlette's traceback; the caller states the reason (compute-server:
    `error: ...` and exit status 2, as for any bad setting)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and app.state.startup_error is not None:
                message = {"type": message["type"], "message": ""}
            await send(message)

        return await app(scope, receive, sending)

    return asgi


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


# -- a deadline for sending ---------------------------------------------------------------------
#
# A client that stops reading keeps its connection for ever: the kernel buffers what we send
# until its receive window closes, then our writes wait, and closing the transport waits for a
# flush that never comes (asyncio closes only once the buffer drained). A live view's send had a
# deadline, but returning after it still left the connection open with ~300 KiB queued in the
# kernel. The watch below looks at each connection every `timeout / 6` seconds: while the server
# has bytes for the client (in the transport's buffer or the kernel's send queue) and the
# client's TCP acknowledged none of them since the last look, the stall is timed; past
# `timeout`, the connection is reset (the kernel's queue dropped, the descriptor freed). Any reply is
# covered this way: live views, downloads, a large listing.

_TIOCOUTQ = termios.TIOCOUTQ
#: struct tcp_info: tcpi_bytes_acked (u64) sits at byte 120 (Linux 4.1+).
_BYTES_ACKED = 120


def _unsent(transport: asyncio.BaseTransport) -> tuple[int, int | None]:
    """(bytes the client has not acknowledged yet, bytes it has acknowledged in all or None
    where the socket does not say: not TCP, not Linux)."""
    buffered = transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
    sock: Any = transport.get_extra_info("socket")
    if sock is None:
        return buffered, None
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, ValueError, AttributeError):
        return buffered, None
    acked = struct.unpack_from("Q", info, _BYTES_ACKED)[0] if len(info) >= _BYTES_ACKED + 8 else None
    return buffered + queued, acked


def _reset(transport: asyncio.Transport) -> None:
    """Close with a reset: the kernel drops what it still holds for the client at once (a plain
    close would keep trying to deliver it to a window that never opens)."""
    sock: Any = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _SendWatch:
    """The stall timer of one connection."""

    def __init__(self, protocol: HttpToolsProtocol | H11Protocol, timeout: float) -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.interval = timeout / 6
        self.timer: asyncio.TimerHandle | None = None
        self.progress: int | None = None
        self.stalled_since: float | None = None

    def start(self) -> None:
        self.timer = self.protocol.loop.call_later(self.interval, self._look)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _look(self) -> None:
        transport = self.protocol.transport
        unsent, acked = _unsent(transport)
        # Without the kernel's count, a shrinking buffer is the only sign of progress.
        progress = acked if acked is not None else -unsent
        now = self.protocol.loop.time()
        if unsent == 0 or progress != self.progress:
            self.progress, self.stalled_since = progress, None
        elif self.stalled_since is None:
            self.stalled_since = now
        elif now - self.stalled_since >= self.timeout - self.interval:
            limited.warning(
                "send stalled",
                "cut a connection whose client took none of %d bytes for %.0f s",
                unsent,
                self.timeout,
            )
            _reset(transport)
            self.timer = None
            return
        self.timer = self.protocol.loop.call_later(self.interval, self._look)


# -- connections past the budget ----------------------------------------------------------------

BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
    b"content-length: 53\r\nconnection: close\r\n\r\n"
    b'{"detail":"too many open connections; retry shortly"}'
)


#: Most seconds a refused connection stays open for its request to arrive (see _Refusal).
REFUSED_LINGER = 0.5
#: Most refused connections waiting so at once: past it they are closed at once. Each holds a
#: descriptor, and a flood of refusals must not take what the refusals protect.
MAX_LINGERING = 16
_lingering = 0


class _Refusal:
    """A connection past the budget: a 503, and closed once its request came in (read and
    dropped), at EOF, or after REFUSED_LINGER. Closing while the request is still arriving would
    reset the connection, and the client would see an error instead of the 503."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        global _lingering
        self.transport = transport
        transport.write(BUSY_REPLY)
        self.timer: asyncio.TimerHandle | None = None
        if _lingering >= MAX_LINGERING:
            transport.close()
            return
        _lingering += 1
        self.timer = loop.call_later(REFUSED_LINGER, self.close)

    def close(self) -> None:
        global _lingering
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            _lingering -= 1
        self.transport.close()


def _refused(
    protocol: HttpToolsProtocol | H11Protocol, transport: asyncio.Transport, most: int | None
) -> _Refusal | None:
    """A refusal when the connection does not fit the budget (its most connections), else None."""
    if most is None or len(protocol.server_state.connections) < most:
        return None
    limited.warning("connections", "refused a connection: %d are open, the budget's most", most)
    return _Refusal(transport, protocol.loop)


class _Guarded(asyncio.Protocol):
    """What both protocols add: admission, the header deadline, the send watch.

    Mixed in before uvicorn's protocol class (`class X(_Guarded, H11Protocol)`), so `super()`
    here reaches uvicorn's methods.
    """

    header_read_timeout: float = 10.0
    send_timeout: float = 30.0
    max_connections: int | None = None
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        protocol = cast("HttpToolsProtocol | H11Protocol", self)
        self.header_deadline = _HeaderDeadline(protocol, self.header_read_timeout)
        self.send_watch = _SendWatch(protocol, self.send_timeout)
        self.refusal = _refused(protocol, transport, self.max_connections)
        if self.refusal is not None:
            return
        super().connection_made(transport)
        self.header_deadline.arm()
        self.send_watch.start()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # uvicorn's; h11's also parses a pipelined request
        if not self.transport.is_closing():
            self.header_deadline.arm()

    def data_received(self, data: bytes) -> None:
        if self.refusal is None:
            super().data_received(data)
        else:
            self.refusal.close()  # its request came in: dropped, nothing unread left behind

    def eof_received(self) -> None:
        if self.refusal is not None:
            self.refusal.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.cancel()
        self.send_watch.stop()
        if self.refusal is not None:  # refused in connection_made: nothing was set up
            self.refusal.close()
            return
        super().connection_lost(exc)


class HttpToolsWithHeaderDeadline(_Guarded, HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        self.header_deadline.cancel()
        super().on_headers_complete()


class H11WithHeaderDeadline(_Guarded, H11Protocol):
    """h11 has no headers-complete callback: its deadline, when it fires, finds the request
    with the app and leaves the connection alone (_HeaderDeadline._expired)."""


def http_protocol(
    timeout: float,
    http: Literal["httptools", "h11"] = "httptools",
    *,
    send_timeout: float = 30.0,
    max_connections: int | None = None,
) -> type[asyncio.Protocol]:
    """uvicorn's `http=` for compute-server: its HTTP parser with a `timeout` (seconds) on
    headers, `send_timeout` for a client that takes no data, and at most `max_connections`."""
    base = HttpToolsWithHeaderDeadline if http == "httptools" else H11WithHeaderDeadline
    attrs = {"header_read_timeout": timeout, "send_timeout": send_timeout, "max_connections": max_connections}
    return type(base.__name__, (base,), attrs)
