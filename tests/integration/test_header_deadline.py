"""A client that stalls before its request headers are complete is answered 408 and closed
(`HEADER_READ_TIMEOUT`), on a real uvicorn over raw sockets, with either HTTP parser; a slow
client that finishes in time is served, and each request on a kept-alive connection has its own
deadline. Without it, connections stalled in their headers piled up until the file descriptors
ran out (issue 8, "Over HTTP")."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal

import httpx
import pytest
import uvicorn

from compute.config import Settings
from tests.support.inprocess import idle_connections, running_server, uvicorn_serving
from tests.support.waits import wait_for

pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)

GET = b"GET / HTTP/1.1\r\nHost: compute\r\n\r\n"


async def _open(web: uvicorn.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", web.config.port)


async def _answer_then_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), 30)


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_connections_stalled_in_their_headers_are_closed(
    settings: Settings, http: Literal["httptools", "h11"]
) -> None:
    async with (
        running_server(replace(settings, header_read_timeout=1.0)) as srv,
        uvicorn_serving(srv.app, http) as web,
    ):
        stalled = []
        for n in range(60):
            reader, writer = await _open(web)
            # Half a request line, the headers cut short, or nothing at all.
            writer.write([b"GET /jo", b"GET / HTTP/1.1\r\nHost: comp", b""][n % 3])
            await writer.drain()
            stalled.append((reader, writer))
        await wait_for(
            lambda: len(web.server_state.connections) >= len(stalled), what="the stalled connections accepted"
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.config.port}") as client:
            assert (await client.get("/")).status_code == 200  # served while they stall
            answers = await asyncio.gather(*(_answer_then_close(r) for r, _ in stalled))
            for answer in answers:  # read() returned: answered, then closed by the server
                assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
                assert answer.endswith(b"request headers too slow\r\n")
            for _, writer in stalled:
                writer.close()
            await wait_for(
                lambda: not web.server_state.connections - idle_connections(web),
                what="the stalled connections released",
            )
            assert (await client.get("/")).status_code == 200


async def test_a_trickle_that_never_finishes_its_headers_is_closed(settings: Settings) -> None:
    """The deadline is for the whole of the headers, not for each silence: a client sending a
    byte now and then (well inside any idle timeout) is closed all the same."""
    async with (
        running_server(replace(settings, header_read_timeout=1.0)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        reader, writer = await _open(web)
        answer = asyncio.create_task(_answer_then_close(reader))
        writer.write(b"GET / HTTP/1.1\r\n")
        while not answer.done():
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            await asyncio.wait([answer], timeout=0.1)  # a client pacing itself, not a wait for state
        assert (await answer).startswith(b"HTTP/1.1 408")
        writer.close()


async def test_headers_sent_slowly_but_in_time_are_served(settings: Settings) -> None:
    async with (
        running_server(replace(settings, header_read_timeout=30.0)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        reader, writer = await _open(web)
        for n in range(0, len(GET), 4):
            writer.write(GET[n : n + 4])
            await writer.drain()
            await asyncio.sleep(0.05)  # the slow client under test, not a wait for state
        status = await asyncio.wait_for(reader.readline(), 30)
        assert status.startswith(b"HTTP/1.1 200"), status
        writer.close()


async def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(settings: Settings) -> None:
    async with (
        running_server(replace(settings, header_read_timeout=1.0)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        reader, writer = await _open(web)
        writer.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), 30)
        # uvicorn's keep-alive timer stops at the first byte of the next request: this part of a
        # request line would hold the connection for ever without a deadline of its own.
        writer.write(b"GET /jo")
        await writer.drain()
        assert (await _answer_then_close(reader)).startswith(b"HTTP/1.1 408")
        writer.close()
