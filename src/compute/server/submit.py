"""What POST /jobs/<task_type> does with the job a plugin built: store it, then tell the workers.

`JobSubmitter.add_job` is the `add_job` of cl_ml_tools' JobRepository protocol as the plugin
routes see it (plugin_routes.py calls it on a database thread): `JobRepository.insert_job`
commits the row, then `Dispatcher.job_added` publishes the hint and the CL Server `queued` event.
A retry that finds its Idempotency-Key's job already stored dispatches nothing.
"""

from __future__ import annotations

from cl_ml_tools import Job

from compute.db.repository import JobRepository
from compute.server.dispatch import Dispatcher


class JobSubmitter:
    def __init__(self, repo: JobRepository, dispatcher: Dispatcher) -> None:
        self.repo = repo
        self.dispatcher = dispatcher

    def add_job(self, job: Job, created_by: str | None = None, priority: int | None = None) -> str:
        """Commit a new queued job and hint it; returns its id (the earlier job's for a retry)."""
        record, created = self.repo.insert_job(job, created_by, priority)
        if created:
            self.dispatcher.job_added(record)
        return record.job_id
