"""Retention: finished jobs and their folders pruned by age (RETENTION_DAYS) and count
(RETENTION_MAX_JOBS), in the background.

Batches of `BATCH` jobs, each one short write transaction (db/cleanup.py), so a worker's claim
never waits behind a large cleanup; a folder is removed only after its row is gone (a folder
without a row is what the orphan sweep removes anyway, a row without its folder would be a job
whose files vanished). Queued and running jobs are never touched: the delete is guarded by status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from compute.db import cleanup as db
from compute.jobs import now_ms
from compute.logs import LogLimiter
from compute.server.sweeps.periodic import Gate, always, every
from compute.storage import JobStorage

log = logging.getLogger(__name__)
limited = LogLimiter(log)

DAY_MS = 24 * 3600 * 1000
#: Jobs per transaction.
BATCH = 200
#: Seconds between background passes.
INTERVAL = 60.0


@dataclass
class RetentionPolicy:
    #: Finished jobs older than this many days go (0: keep them, whatever their age).
    days: float
    #: At most this many finished jobs are kept, the newest (0: no limit).
    max_jobs: int

    @property
    def active(self) -> bool:
        return self.days > 0 or self.max_jobs > 0


class RetentionSweeper:
    def __init__(
        self,
        engine: Engine,
        storage: JobStorage,
        policy: RetentionPolicy,
        batch: int = BATCH,
        interval: float = INTERVAL,
        when: Gate = always,
    ) -> None:
        self.when = when
        self.engine = engine
        self.storage = storage
        self.policy = policy
        self.batch = batch
        self.interval = interval
        #: Jobs removed since start.
        self.pruned = 0

    def prune(self) -> int:
        """One pass: by age, then by count; returns the number of jobs removed. Blocking."""
        removed = 0
        if self.policy.days > 0:
            cutoff = now_ms() - int(self.policy.days * DAY_MS)
            removed += self._drain(lambda: db.finished_before(self.engine, cutoff, self.batch))
        if self.policy.max_jobs > 0:
            removed += self._drain(lambda: db.finished_beyond(self.engine, self.policy.max_jobs, self.batch))
        if removed:
            log.info("retention removed %d finished jobs", removed)
        return removed

    def _drain(self, select_batch: Callable[[], list[str]]) -> int:
        removed = 0
        while True:
            candidates = select_batch()
            deleted = db.delete_finished(self.engine, candidates)
            for job_id in deleted:  # rows first, then folders
                self.storage.cleanup_job(job_id)
            removed += len(deleted)
            self.pruned += len(deleted)
            # Fewer than a batch: done. None deleted of a full batch: they all changed status
            # meanwhile (requeued by a retry); the next pass sees them again.
            if len(candidates) < self.batch or not deleted:
                return removed

    async def run(self) -> None:
        if not self.policy.active:
            return
        # On a thread: a locked database must not stall the event loop.
        await every(
            self.interval, lambda: asyncio.to_thread(self.prune), "retention pass", limited, self.when
        )
