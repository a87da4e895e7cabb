"""A TCP balancer for the cross-host tests: one address in front of several compute-servers.

`python -m compute_bench.hosts.balancer LISTEN_HOST:PORT BACKEND_HOST:PORT [BACKEND ...]` accepts
connections and hands each to the next backend in turn that accepts it; a backend that refuses
or does not answer within a second is skipped for that connection. No health checks, no HTTP:
what a deployment's nginx or HAProxy does for the tests (issue 18: several servers behind one
address), so a server that dies takes only its own connections with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys

CONNECT_TIMEOUT = 1.0
CHUNK = 256 * 1024


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _open(
    backends: list[tuple[str, int]], turn: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    for i in range(len(backends)):
        host, port = backends[(turn + i) % len(backends)]
        with contextlib.suppress(OSError, TimeoutError):
            return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    raise ConnectionError("no backend accepts connections")


async def serve(listen: tuple[str, int], backends: list[tuple[str, int]]) -> None:
    turns = itertools.count()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await _open(backends, next(turns))
        except ConnectionError:
            client_writer.transport.abort()
            return
        await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
        for writer in (client_writer, backend_writer):
            writer.close()

    server = await asyncio.start_server(handle, *listen, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        usage = "usage: python -m compute_bench.hosts.balancer LISTEN_HOST:PORT BACKEND_HOST:PORT ..."
        print(usage, file=sys.stderr)
        return 2
    asyncio.run(serve(_address(argv[0]), [_address(a) for a in argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
