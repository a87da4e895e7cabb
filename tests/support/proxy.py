"""A TCP proxy that cuts connections on purpose: a link that breaks in the middle of a transfer.

Between a worker and the server: every connection is forwarded both ways. A rule counts the
bytes going one way (the client's requests up, the server's answers down) from the moment it
is set, and once they pass N it cuts the connection that carried them, after exactly N bytes,
closing both sides as a lost link would. Each rule fires `times` times (counting afresh after
each cut), then the proxy only forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from compute_bench.harness import free_port


@dataclass
class CutRule:
    #: Bytes this direction may carry (since the rule was set, or since its last cut) before a cut.
    after: int
    times: int = 1
    seen: int = 0


@dataclass
class CuttingProxy:
    target_port: int
    target_host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    #: Cut a connection once the client sent this many bytes on it.
    up: CutRule | None = None
    #: Cut a connection once the server sent this many bytes on it.
    down: CutRule | None = None
    #: Connections cut so far, and bytes forwarded each way.
    cuts: int = 0
    sent_up: int = 0
    sent_down: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            return
        cut = asyncio.Event()
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, "up", cut)),
            asyncio.create_task(self._pump(server_r, client_w, "down", cut)),
        ]
        try:
            await asyncio.wait([*pumps, asyncio.create_task(cut.wait())], return_when=asyncio.FIRST_COMPLETED)
            if cut.is_set():  # a lost link: both sides go at once, nothing more is delivered
                for writer in (client_w, server_w):
                    writer.transport.abort()
            else:
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, server_w):
                with contextlib.suppress(Exception):
                    writer.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, cut: asyncio.Event
    ) -> None:
        try:
            while data := await reader.read(65536):
                rule = self.up if direction == "up" else self.down
                if rule is not None and rule.times > 0 and rule.seen + len(data) > rule.after:
                    data = data[: rule.after - rule.seen]
                    writer.write(data)
                    self._count(direction, len(data))
                    await writer.drain()
                    rule.times -= 1
                    rule.seen = 0
                    self.cuts += 1
                    cut.set()
                    return
                if rule is not None and rule.times > 0:
                    rule.seen += len(data)
                writer.write(data)
                self._count(direction, len(data))
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            return

    def _count(self, direction: str, n: int) -> None:
        if direction == "up":
            self.sent_up += n
        else:
            self.sent_down += n
