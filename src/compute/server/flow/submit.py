"""What POST /jobs/<task_type> does with the job a plugin built: store it, then tell the workers.

`JobSubmitter.submit` is the request path (http/plugin_routes.py awaits it): jobs submitted while an
earlier batch is being written wait and are committed together, in one transaction on a
database thread (`JobRepository.insert_rows`), and then announced (`ChangeAnnouncer`: one hint
per task type for the batch, and each job's CL Server `queued` event). Under a burst
this turns a write lock, a commit and a thread hop per job into one per batch; a lone request
is a batch of one and waits for nothing. Each request still gets its answer only after its row
committed, so nothing answered 200 is lost, and a failed batch fails each of its requests.

A job with an Idempotency-Key is stored on its own (`add_job`): its insert may collide with a
retry's on the unique index, which must not fail the jobs around it. `add_job` is also the
`add_job` of cl_ml_tools' JobRepository protocol outside a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cl_ml_tools import Job

from compute.db.repository import JobRepository
from compute.jobs import JobChange
from compute.server.dbcalls import RouteDatabase
from compute.server.flow.announcer import ChangeAnnouncer

#: Most jobs committed in one transaction.
MAX_BATCH = 100


class JobSubmitter:
    def __init__(self, repo: JobRepository, announcer: ChangeAnnouncer, db: RouteDatabase) -> None:
        self.repo = repo
        self.announcer = announcer
        self.db = db
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[JobChange]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Transactions the request path committed, and the jobs in them (batching at work).
        self.batches = 0
        self.batched_jobs = 0

    def add_job(
        self,
        job: Job,
        created_by: str | None = None,
        priority: int | None = None,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Commit a new queued job and announce it; returns its id (the earlier job's for a
        retry with the same `idempotency_key`). Blocking."""
        record, change = self.repo.insert_job(
            job, created_by, priority, timeout=timeout, idempotency_key=idempotency_key
        )
        self.announcer.announce([change])
        return record.job_id

    async def submit(
        self,
        job: Job,
        created_by: str | None = None,
        priority: int | None = None,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """`add_job` from a request, on the event loop: batched with concurrent submissions.

        Raises DatabaseUnavailable (503) like any route database call. Cancelling the caller
        does not cancel the write: it waits for its outcome first, as RouteDatabase.call does.
        """
        if idempotency_key is not None:
            return await self.db.call(
                self.add_job, job, created_by, priority, timeout=timeout, idempotency_key=idempotency_key
            )
        stored: asyncio.Future[JobChange] = asyncio.get_running_loop().create_future()
        self._waiting.append((self.repo.new_row(job, created_by, priority, timeout=timeout), stored))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="job-inserts")
        try:
            return (await asyncio.shield(stored)).job_id
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await stored
            raise

    async def _write(self) -> None:
        """Commit what waits, batch after batch, until nothing does."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    changes = await self.db.call(self._store, [row for row, _ in batch])
                except Exception as exc:  # DatabaseUnavailable (503) or a bug (500), for each request
                    for _, stored in batch:
                        if not stored.done():
                            stored.set_exception(exc)
                    continue
                except BaseException:  # cancelled: the server is stopping
                    for _, stored in batch:
                        stored.cancel()
                    raise
                for (_, stored), change in zip(batch, changes, strict=True):
                    if not stored.done():
                        stored.set_result(change)
        finally:
            self._writer = None

    def _store(self, rows: list[dict[str, Any]]) -> list[JobChange]:
        """On a database thread: one transaction for the batch, then its announcement."""
        changes = self.repo.insert_rows(rows)
        self.batches += 1
        self.batched_jobs += len(changes)
        self.announcer.announce(changes)
        return changes
