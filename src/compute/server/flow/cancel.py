"""Cancellation: the database first, then a signed word to the worker running the job.

The cancel request is signed with the claim's lease token (signing.cancel_signature), which only
the database, the server and the claiming worker know: a worker stops a job only on a request
that verifies, so nobody else on the broker can make it drop one.
"""

from __future__ import annotations

from compute.bus.interface import Bus
from compute.db.transitions import JobTransitions
from compute.jobs import JobStatus, now_ms
from compute.server.flow.announcer import ChangeAnnouncer
from compute.signing import cancel_signature
from compute.topics import CancelRequest, Topics, encode


class Canceller:
    def __init__(
        self,
        transitions: JobTransitions,
        bus: Bus,
        topics: Topics,
        announcer: ChangeAnnouncer,
    ) -> None:
        self.transitions = transitions
        self.bus = bus
        self.topics = topics
        self.announcer = announcer

    def cancel(self, job_id: str) -> str | None:
        """Cancel `job_id`; returns its status before, or None when there is no such job.

        Blocking: the routes call it on a database thread (RouteDatabase), and what it publishes
        goes to the event loop, where the bus lives (the announcer's hop, a LoopSafeBus).
        """
        found = self.transitions.cancel(job_id)
        if found is None:
            return None
        self.announcer.announce([found.change])
        running = found.change is not None and found.previous == JobStatus.PROCESSING.value
        if running and found.worker_id and found.lease_token:
            now = now_ms()
            sig = cancel_signature(found.lease_token, job_id, found.attempt, now)
            request = CancelRequest(job_id=job_id, attempt=found.attempt, timestamp=now, sig=sig)
            self.bus.publish(self.topics.worker_cancel(found.worker_id), encode(request), qos=1)
        return found.previous
