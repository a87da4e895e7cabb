"""Orphan rescue: jobs of a worker that is gone go back to the queue (or fail, out of attempts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from compute.db.transitions import JobTransitions, Rescued
from compute.jobs import JobStatus
from compute.server.dispatch import Dispatcher

log = logging.getLogger(__name__)


class Rescuer:
    def __init__(self, transitions: JobTransitions, dispatcher: Dispatcher, lease_seconds: float,
                 on_change: Callable[[], None]) -> None:
        self.transitions = transitions
        self.dispatcher = dispatcher
        #: Check for expired leases this often: a quarter of the lease, between 1 and 15 s.
        self.interval = min(15.0, max(1.0, lease_seconds / 4))
        self.on_change = on_change
        self.rescued = 0

    def worker_lost(self, worker_id: str, session: str | None) -> None:
        """A worker's Last Will (for that session) arrived: rescue that session's jobs now."""
        self._requeue(self.transitions.rescue_worker(worker_id, session))

    def _requeue(self, jobs: list[Rescued]) -> None:
        for job in jobs:
            self.rescued += 1
            if job.status == JobStatus.QUEUED.value:
                self.dispatcher.hint(job.task_type, job.job_id)
        if jobs:
            self.on_change()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self._requeue(self.transitions.rescue_expired())
            except Exception:
                log.exception("lease sweep failed; trying again in %.0f s", self.interval)
