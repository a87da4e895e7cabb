"""live_fanout: what open live views (SSE) cost the server per job change, and what they cost
everyone else's requests.

Two phases on one cluster with no worker (each submitted job is one `queued` change): first no
stream is open, then `streams` clients read `GET /events` (one audience: the cluster runs without
auth, so every stream sees every change). In each phase `changes` jobs are submitted one after
another while another client reads `GET /jobs?limit=50` in a loop. Server CPU per change in the
second phase, less the first, is the fan-out's cost; the GET /jobs latencies show what the
streams cost a bystander. Every stream must have received every change before the phase ends,
so nothing is measured that was not delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from compute_bench.client import Submitter
from compute_bench.cluster import Cluster
from compute_bench.stats import cpu_seconds, summary

NS_PER_MS = 1_000_000


class _Readers:
    """`count` clients reading GET /events, counting `event: job` frames."""

    def __init__(self, base_url: str, count: int) -> None:
        self.base_url = base_url
        self.count = count
        self.jobs = [0] * count
        self.connected = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> _Readers:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        self._tasks = [asyncio.create_task(self._read(n)) for n in range(self.count)]
        deadline = time.monotonic() + 60
        while self.connected < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.connected} of {self.count} live views opened")
            failed = [t for t in self._tasks if t.done()]
            if failed:
                failed[0].result()
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _read(self, n: int) -> None:
        assert self._session is not None
        async with self._session.get(f"{self.base_url}/events") as response:
            if response.status != 200:
                raise RuntimeError(f"GET /events: {response.status} {(await response.read())[:200]!r}")
            first = True
            async for line in response.content:
                if first and line.startswith(b": connected"):
                    self.connected += 1
                    first = False
                elif line.startswith(b"event: job"):
                    self.jobs[n] += 1

    async def all_received(self, want: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while min(self.jobs) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"live views got {min(self.jobs)} of {want} changes")
            await asyncio.sleep(0.05)


async def _phase(cluster: Cluster, sub: Submitter, changes: int, readers: _Readers | None) -> dict[str, Any]:
    assert cluster.server is not None
    pid = cluster.server.pid
    base = readers.jobs[0] if readers else 0
    stop = asyncio.Event()
    listing: list[int] = []

    async def bystander() -> None:
        while not stop.is_set():
            t0 = time.perf_counter_ns()
            async with sub.session.get(f"{cluster.base_url}/jobs?limit=50") as r:
                await r.read()
                assert r.status == 200, r.status
            listing.append(time.perf_counter_ns() - t0)

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    side = asyncio.create_task(bystander())
    for _ in range(changes):
        await sub.noop()
    if readers is not None:
        await readers.all_received(base + changes)
    stop.set()
    await side
    cpu1, elapsed = cpu_seconds(pid), time.monotonic() - t0
    assert cpu0 is not None and cpu1 is not None
    return {
        "changes": changes,
        "seconds": round(elapsed, 2),
        "server_cpu_ms_per_change": round((cpu1 - cpu0) * 1000 / changes, 3),
        "list_jobs_ms": summary([v / NS_PER_MS for v in listing]),
    }


async def live_fanout(cluster: Cluster, sub: Submitter, streams: int, changes: int) -> dict[str, Any]:
    quiet = await _phase(cluster, sub, changes, None)
    async with _Readers(cluster.base_url, streams) as readers:
        busy = await _phase(cluster, sub, changes, readers)
    extra = busy["server_cpu_ms_per_change"] - quiet["server_cpu_ms_per_change"]
    return {
        "streams": streams,
        "no_streams": quiet,
        "with_streams": busy,
        "fanout_cpu_ms_per_change": round(extra, 3),
        "fanout_cpu_us_per_stream_change": round(extra * 1000 / streams, 2),
    }
