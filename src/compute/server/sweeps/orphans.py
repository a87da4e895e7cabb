"""Job folders without a job: left by an upload that failed, or a crash, between folder and row.

A folder is an orphan when no row has its id and it has not changed for ORPHAN_GRACE_SECONDS,
so an upload still being stored (folder first, row a moment later) is never touched.
`OrphanSweeper.run` removes them in the background; `DELETE /admin/jobs/cleanup` too.
"""

from __future__ import annotations

import logging

from compute.db.repository import JobRepository
from compute.logs import LogLimiter
from compute.server.dbcalls import DatabaseUnavailable, RouteDatabase
from compute.server.sweeps.periodic import Gate, always, every
from compute.storage import JobStorage

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Longest pause between background sweeps, seconds.
MAX_INTERVAL = 300.0


class OrphanSweeper:
    def __init__(
        self, repo: JobRepository, storage: JobStorage, db: RouteDatabase, grace: float, when: Gate = always
    ) -> None:
        self.when = when
        self.repo = repo
        self.storage = storage
        self.db = db
        self.grace = grace

    def remove_orphans(self) -> tuple[int, int]:
        """Remove the orphan folders; returns (folders removed, bytes freed). Blocking."""
        old = [job_id for job_id, age in self.storage.job_folders() if age >= self.grace]
        if not old:
            return 0, 0
        known = self.repo.existing_job_ids(old)
        removed = freed = 0
        for job_id in old:
            if job_id in known:
                continue
            freed += self.storage.job_bytes(job_id)
            if self.storage.cleanup_job(job_id):
                removed += 1
        if removed:
            log.info("removed %d job folders without a job (%d bytes)", removed, freed)
        return removed, freed

    async def run(self) -> None:
        await every(
            min(MAX_INTERVAL, max(1.0, self.grace / 2)),
            self._one_pass,
            "orphan folder sweep",
            limited,
            self.when,
        )

    async def _one_pass(self) -> None:
        try:
            await self.db.call(self.remove_orphans)
        except DatabaseUnavailable:
            pass  # next time
