"""Forgetting workers gone for good: their retained topics cleared, their session rows deleted.

A worker that stops leaves retained messages (`status` = offline, a Last Will on `info`) that the
broker keeps forever; with a new worker id per run they piled up. Workers whose sessions have all
been silent (`last_seen`) for WORKER_FORGET_AFTER get empty retained payloads on
`<root>/workers/<id>/status`, `<root>/workers/<id>/info` and `inference/workers/<id>`, and their
`worker_sessions` rows are deleted, so each is cleared once. Only the server does this (the
broker's ACL lets only it write another worker's topics); the decision comes from the database,
never from what is on the bus.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine

from compute.bus.interface import Bus
from compute.db import cleanup as db
from compute.jobs import now_ms
from compute.logs import LogLimiter
from compute.server.sweeps.periodic import Gate, always, every
from compute.topics import Topics

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Workers per pass.
BATCH = 100
#: Longest pause between passes, seconds.
MAX_INTERVAL = 3600.0


class WorkerForgetter:
    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        topics: Topics,
        forget_after: float,
        batch: int = BATCH,
        when: Gate = always,
    ) -> None:
        self.when = when
        self.engine = engine
        self.bus = bus
        self.topics = topics
        self.forget_after = forget_after
        self.batch = batch
        self.interval = min(MAX_INTERVAL, max(1.0, forget_after / 4))
        #: Workers forgotten since start.
        self.forgotten = 0

    def clear(self, worker_id: str) -> bool:
        """Empty retained payloads on every retained topic of `worker_id`; False if one was not sent."""
        sent = True
        for topic in (
            self.topics.worker_status(worker_id),
            self.topics.worker_info(worker_id),
            self.topics.legacy_worker(worker_id),
        ):
            sent = self.bus.publish(topic, b"", qos=1, retain=True) and sent
        return sent

    async def forget_once(self) -> list[str]:
        """One pass: clear and delete up to a batch of gone workers; returns their ids."""
        if self.forget_after <= 0 or not self.bus.connected:
            return []  # never forget, or wait for the broker: a clearing that was not sent is kept for later
        cutoff = now_ms() - int(self.forget_after * 1000)
        gone = await asyncio.to_thread(db.workers_gone_since, self.engine, cutoff, self.batch)
        cleared = [worker_id for worker_id in gone if self.clear(worker_id)]
        if cleared:
            await asyncio.to_thread(db.forget_sessions, self.engine, cleared, cutoff)
            self.forgotten += len(cleared)
            log.info(
                "forgot %d workers silent for %.0f s: %s",
                len(cleared),
                self.forget_after,
                ", ".join(cleared[:10]) + (" ..." if len(cleared) > 10 else ""),
            )
        return cleared

    async def run(self) -> None:
        if self.forget_after <= 0:
            return
        await every(self.interval, self._one_pass, "clearing gone workers", limited, self.when)

    async def _one_pass(self) -> None:
        while len(await self.forget_once()) == self.batch:
            pass
