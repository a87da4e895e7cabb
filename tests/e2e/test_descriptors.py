"""compute-server under a real, low open-file limit, and clients that hold what they can (issue 16,
item 2), over raw sockets against the real command line (uvicorn, embedded broker), on SQLite and
PostgreSQL.

- A live view whose client reads nothing is cut once the client has taken none of what waits for
  it for HTTP_SEND_TIMEOUT (it used to stay open, with the kernel's send queue full, for ever).
- With RLIMIT_NOFILE at 256, hundreds of stalled uploads and live views from one address do not
  stop `GET /` being answered, and another client's upload and live view get a reply that says
  why (503 with Retry-After, never a 500).
- The server logs the limit it raised and its share-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.commands import Commands, Served, start_server
from tests.support.images import png_bytes
from tests.support.waits import wait_for

pytestmark = pytest.mark.e2e

#: Runs a command with RLIMIT_NOFILE set to argv[1] (soft and hard), as a small host would.
_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


async def _start(procs: Commands, env: dict[str, str], limit: int | None, **settings: str) -> Served:
    env.update(settings)
    procs.env.update(settings)
    wrap = () if limit is None else (sys.executable, "-c", _LIMITED, str(limit))
    return await start_server(procs, "--no-auth", wrap=wrap)


@pytest.fixture
def database(env: dict[str, str], procs: Commands, db_url: str) -> str:
    """SQLite or PostgreSQL, migrated, for the server under test."""
    env["DATABASE_URL"] = procs.env["DATABASE_URL"] = db_url
    return db_url


_ESTABLISHED = 1  # tcp_info.tcpi_state


def _established(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == _ESTABLISHED


def _answer(sock: socket.socket) -> int | str:
    try:
        return _status(sock)
    except ConnectionResetError:
        return "reset"


def _status(sock: socket.socket) -> int:
    """The HTTP status of the reply the socket gets (its first line)."""
    sock.settimeout(30)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed before a status line"
        head += chunk
    return int(head.split()[1])


def _open_stream(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # a client that will read nothing: a small window fills fast
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: compute\r\n\r\n")
    return sock


@contextlib.contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def _submit(client: httpx.AsyncClient) -> httpx.Response:
    files = {"file": ("p.png", png_bytes((8, 8)), "image/png")}
    return await client.post("/jobs/image_conversion", data={"format": "jpg"}, files=files)


async def test_a_live_view_whose_client_reads_nothing_is_cut(
    procs: Commands, env: dict[str, str], database: str
) -> None:
    timeout = 2.0
    served = await _start(procs, env, None, HTTP_SEND_TIMEOUT=str(timeout), SSE_HEARTBEAT_SECONDS="60")
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as client:
        with _closing([_open_stream(served.http_port, rcvbuf=2048) for _ in range(5)]) as stuck:
            assert {_status(sock) for sock in stuck} == {200}
            # Job changes until the stuck clients' windows are full and the server's queue holds
            # what they do not take: about 170 bytes each, a few kB fill a 2 kB window.
            for _ in range(200):
                assert (await _submit(client)).status_code == 200
            stalled = time.monotonic()
            await wait_for(
                lambda: not any(_established(sock) for sock in stuck),
                timeout=timeout * 3 + 10,
                what="the stuck streams cut",
            )
            took = time.monotonic() - stalled
            assert took <= timeout * (1 + 1 / 6) + 2, took
        # A reader that reads is not cut: it gets every change, heartbeats aside.
        async with client.stream("GET", "/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "retry: 3000"
            assert (await _submit(client)).status_code == 200
            assert "event: job" in [await anext(lines) for _ in range(3)]
    assert "cut a connection whose client took none of" in procs.log("server")


@contextlib.asynccontextmanager
async def _stalled_uploads(port: int, count: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """`count` connections, each in the middle of a large upload that stopped sending."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(count):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            writer.write(
                b"POST /jobs/image_conversion HTTP/1.1\r\nHost: compute\r\nContent-Length: 10000000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nContent-Disposition: form-data;"
            )
            writers.append(writer)
        yield writers
    finally:
        for writer in writers:
            writer.close()


async def test_a_low_open_file_limit_leaves_health_uploads_and_streams_answered(
    procs: Commands, env: dict[str, str], database: str
) -> None:
    limit = 256
    served = await _start(procs, env, limit, SSE_MAX_PER_USER="1000", UPLOAD_IDLE_TIMEOUT="120")
    log = procs.log("server")
    assert f"open files: limit {limit} (soft = hard)" in log
    assert f"open files: {limit} open files: at most " in log
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=10) as client,
        _stalled_uploads(served.http_port, 400) as uploads,
    ):
        streams = [_open_stream(served.http_port) for _ in range(300)]
        with _closing(streams):
            answered = await asyncio.to_thread(lambda: [_answer(sock) for sock in streams])
            # Each one a live view, or refused at once (503, or past the refusals the server
            # keeps open at a time, a reset): a descriptor held for the next client either way.
            assert set(answered) <= {200, 503, "reset"} and 0 < answered.count(200) <= 72, answered
            # Health answers while uploads and streams hold every share they are given.
            for _ in range(5):
                assert (await client.get("/")).status_code == 200
            # Another client's upload and live view get a reply that says why, never a 500.
            upload = await _submit(client)
            assert upload.status_code in (200, 503), upload.text
            if upload.status_code == 503:
                assert upload.headers["retry-after"] and "retry" in upload.json()["detail"]
            refused = await client.get("/events")
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
            assert (await client.get("/jobs")).status_code == 200
        del uploads
    assert served.proc.poll() is None
    assert "Too many open files" not in procs.log("server")
