"""Operators' changes to a job (PATCH /jobs/{id}, POST /jobs/{id}/retry): the database first,
then what the workers and CL Server clients need to hear about it.

Called on the routes' database threads; the dispatcher's bus hops to the event loop.
"""

from __future__ import annotations

from compute.db.transitions import Changed, JobTransitions
from compute.jobs import JobStatus, now_ms
from compute.server.flow.dispatch import Dispatcher
from compute.server.live.queue_summary import QueueReporter


class JobActions:
    def __init__(self, transitions: JobTransitions, dispatcher: Dispatcher, queues: QueueReporter) -> None:
        self.transitions = transitions
        self.dispatcher = dispatcher
        self.queues = queues

    def reprioritise(self, job_id: str, priority: int) -> Changed | None:
        """A queued job's new priority. A raised one is hinted again: a worker that went idle
        while the job waited behind others (or in a retry's backoff) looks once more; a lower
        priority cannot make a job claimable sooner, so it needs no hint."""
        changed = self.transitions.reprioritise(job_id, priority)
        if changed is not None and changed.applied and priority > changed.priority:
            self.dispatcher.hint(changed.task_type, job_id, priority)
        return changed

    def retry(self, job_id: str) -> Changed | None:
        """A failed or cancelled job queued again: hinted, and `queued` on `inference/events`."""
        changed = self.transitions.retry(job_id)
        if changed is not None and changed.applied:
            now = now_ms()
            self.dispatcher.hint(changed.task_type, job_id, changed.priority, now)
            self.dispatcher.job_changed(
                job_id, JobStatus.QUEUED.value, timestamp=now, task_type=changed.task_type
            )
            self.queues.mark_dirty()
        return changed
