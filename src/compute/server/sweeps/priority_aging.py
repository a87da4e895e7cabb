"""The background half of priority aging (db/aging.py): every step, queued jobs that waited a
step move up one priority, in batches, on a thread (a locked database must not stall the loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Engine

from compute.db.aging import age_queued
from compute.jobs import now_ms
from compute.logs import LogLimiter
from compute.server.sweeps.periodic import Gate, always, every

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Jobs per transaction.
BATCH = 500


class PriorityAging:
    def __init__(
        self,
        engine: Engine,
        step_seconds: float,
        on_change: Callable[[], None],
        batch: int = BATCH,
        clock: Callable[[], int] = now_ms,
        when: Gate = always,
    ) -> None:
        self.when = when
        self.engine = engine
        self.step_ms = int(step_seconds * 1000)
        self.on_change = on_change
        self.batch = batch
        self.clock = clock
        #: Priority steps given since start.
        self.raised = 0

    def age(self) -> int:
        """Raise every job that is due, a batch per transaction; returns how many. Blocking."""
        total = 0
        now = self.clock()
        while True:
            raised = age_queued(self.engine, now, self.step_ms, self.batch)
            total += raised
            if raised < self.batch:
                break
        self.raised += total
        return total

    async def run(self) -> None:
        if self.step_ms <= 0:
            return
        # Checking a few times a step keeps a job's wait for its next step near the step itself.
        await every(max(0.5, self.step_ms / 4000), self._one_pass, "priority aging", limited, self.when)

    async def _one_pass(self) -> None:
        if await asyncio.to_thread(self.age):
            self.on_change()
