"""Cancellation: the database first, then a signed word to the worker running the job.

The cancel request is signed with the claim's lease token (signing.cancel_signature), which only
the database, the server and the claiming worker know: a worker stops a job only on a request
that verifies, so nobody else on the broker can make it drop one.
"""

from __future__ import annotations

from compute.bus.interface import Bus
from compute.db.transitions import JobTransitions
from compute.jobs import JobStatus, now_ms
from compute.server.flow.dispatch import Dispatcher
from compute.server.live.queue_summary import QueueReporter
from compute.signing import cancel_signature
from compute.topics import CancelRequest, Topics, encode


class Canceller:
    def __init__(
        self,
        transitions: JobTransitions,
        bus: Bus,
        topics: Topics,
        dispatcher: Dispatcher,
        queues: QueueReporter,
    ) -> None:
        self.transitions = transitions
        self.bus = bus
        self.topics = topics
        self.dispatcher = dispatcher
        self.queues = queues

    def cancel(self, job_id: str) -> str | None:
        """Cancel `job_id`; returns its status before, or None when there is no such job.

        Runs on the event loop (the routes are async), where the bus lives.
        """
        found = self.transitions.cancel(job_id)
        if found is None:
            return None
        if found.previous in (JobStatus.QUEUED.value, JobStatus.PROCESSING.value):
            now = now_ms()
            self.dispatcher.job_changed(job_id, JobStatus.CANCELLED.value, timestamp=now)
            if found.previous == JobStatus.PROCESSING.value and found.worker_id and found.lease_token:
                sig = cancel_signature(found.lease_token, job_id, found.attempt, now)
                request = CancelRequest(job_id=job_id, attempt=found.attempt, timestamp=now, sig=sig)
                self.bus.publish(self.topics.worker_cancel(found.worker_id), encode(request), qos=1)
            self.queues.mark_dirty()
        return found.previous
