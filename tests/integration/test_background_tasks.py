"""The server watches its background tasks: one that fails is started again, and the ingest of
worker events, which the server cannot work without, stops it."""

from __future__ import annotations

import asyncio

from compute.config import Settings
from compute.server.services import build_services, running
from tests.support.waits import wait_for


async def test_a_failed_background_task_is_started_again(settings: Settings) -> None:
    services = build_services(settings)
    summary = services.queues.run
    runs: list[int] = []

    async def fails_once() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bug in the queue summary")
        await summary()

    object.__setattr__(services.queues, "run", fails_once)
    async with running(services, start_broker=False):
        await wait_for(lambda: len(runs) == 2, what="the queue summary started again")


async def test_the_event_ingest_failing_stops_the_server(settings: Settings) -> None:
    services = build_services(settings)
    stopped = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("a bug in the ingest")

    object.__setattr__(services.ingest, "run", fails)
    async with running(services, start_broker=False, on_fatal=stopped.set):
        await asyncio.wait_for(stopped.wait(), 10)
