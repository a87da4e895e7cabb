"""Cancellation: the database first, then a word to the worker running the job."""

from __future__ import annotations

from collections.abc import Callable

from compute.bus.base import Bus
from compute.db.transitions import JobTransitions
from compute.jobs import JobStatus, now_ms, sdk_status
from compute.topics import CancelRequest, LegacyJobEvent, Topics, encode


class Canceller:
    def __init__(self, transitions: JobTransitions, bus: Bus, topics: Topics,
                 on_change: Callable[[], None]) -> None:
        self.transitions = transitions
        self.bus = bus
        self.topics = topics
        self.on_change = on_change

    def cancel(self, job_id: str) -> str | None:
        """Cancel `job_id`; returns its status before, or None when there is no such job.

        Runs on the event loop (the routes are async), where the bus lives.
        """
        found = self.transitions.cancel(job_id)
        if found is None:
            return None
        previous, worker_id = found
        if previous in (JobStatus.QUEUED.value, JobStatus.PROCESSING.value):
            now = now_ms()
            legacy = LegacyJobEvent(job_id=job_id, event_type=sdk_status(JobStatus.CANCELLED.value),
                                    progress=0, timestamp=now)
            self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
            if previous == JobStatus.PROCESSING.value and worker_id:
                request = CancelRequest(job_id=job_id, timestamp=now)
                self.bus.publish(self.topics.worker_cancel(worker_id), encode(request), qos=1)
            self.on_change()
        return previous
