"""What waits in staging (files/staging.py) and should not any more: outputs of a completed job
not yet promoted (the server stopped between the commit and the promotion, or the worker wrote
its result to the database itself), and outputs of attempts that can never complete (rescued,
cancelled, failed, deleted). One pass when the server starts, then every STAGING_SWEEP_INTERVAL.
"""

from __future__ import annotations

import logging

from compute.db.repository import JobRepository
from compute.files.staging import OutputStaging
from compute.jobs import JobStatus
from compute.logs import LogLimiter
from compute.server.dbcalls import DatabaseUnavailable, RouteDatabase
from compute.server.sweeps.periodic import Gate, always, every

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds between passes after the first.
STAGING_SWEEP_INTERVAL = 60.0
#: Seconds from start to the first pass: time for the sweep lease's first try (sweeps/lease.py).
FIRST_PASS = 1.0


class StagingSweeper:
    def __init__(
        self, repo: JobRepository, staging: OutputStaging, db: RouteDatabase, when: Gate = always
    ) -> None:
        """`when`: whether this server runs the sweeps now (one server of a deployment does)."""
        self.when = when
        self.repo = repo
        self.staging = staging
        self.db = db

    def sweep(self) -> tuple[int, int]:
        """Promote completed jobs' staged outputs, discard dead attempts'; returns (jobs promoted,
        jobs discarded). Blocking.

        Only attempts up to the one the database names are judged: a newer one may be a claim
        made after the read, uploading right now.
        """
        staged = self.staging.staged()
        if not staged:
            return 0, 0
        states = self.repo.attempts(list(staged))
        promoted = discarded = 0
        for job_id, attempts in staged.items():
            state = states.get(job_id)
            if state is None:  # the job is gone
                self.staging.discard(job_id)
                discarded += 1
                continue
            status, current = state
            if status == JobStatus.COMPLETED.value:
                self.staging.promote(job_id, current)
                promoted += 1
            elif status == JobStatus.PROCESSING.value:
                if any(a < current for a in attempts):
                    self.staging.discard(job_id, below=current)
                    discarded += 1
            elif any(a <= current for a in attempts):
                self.staging.discard(job_id, below=current + 1)
                discarded += 1
        if promoted or discarded:
            log.info("staging sweep: promoted the outputs of %d job(s), discarded %d", promoted, discarded)
        return promoted, discarded

    async def run(self) -> None:
        # Soon after start (what a stop between a commit and its promotion left), then every
        # interval; on the server that holds the sweep lease.
        await every(
            STAGING_SWEEP_INTERVAL, self._one_pass, "staging sweep", limited, self.when, first=FIRST_PASS
        )

    async def _one_pass(self) -> None:
        try:
            await self.db.call(self.sweep)
        except DatabaseUnavailable:
            pass  # next time
