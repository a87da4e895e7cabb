"""Hints: "job available" after a job commits, is requeued, or is rescued from a lost worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from compute.bus.base import Bus
from compute.db.repository import JobRecord
from compute.jobs import now_ms
from compute.topics import JobAvailable, LegacyJobEvent, Topics, encode

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, bus: Bus, topics: Topics, on_change: Callable[[], None]) -> None:
        self.bus = bus
        self.topics = topics
        self.on_change = on_change
        #: Hints that could not be sent (broker down); the workers' sweep still finds the jobs.
        self.unsent = 0

    def job_added(self, job: JobRecord) -> None:
        self.hint(job.task_type, job.job_id, job.priority, job.created_at)
        legacy = LegacyJobEvent(job_id=job.job_id, event_type="queued", progress=0,
                                timestamp=job.created_at)
        self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
        self.on_change()

    def hint(self, task_type: str, job_id: str = "", priority: int = 5, timestamp: int = 0) -> None:
        payload = JobAvailable(job_id=job_id, task_type=task_type, priority=priority,
                               timestamp=timestamp or now_ms())
        if not self.bus.publish(self.topics.job_available(task_type), encode(payload), qos=1):
            self.unsent += 1
            log.warning("broker unreachable: %s job waits for a worker sweep", task_type)

    def hint_at(self, task_type: str, job_id: str, at_ms: int | None) -> None:
        """A hint now, or when a requeued job's backoff ends."""
        delay = 0.0 if at_ms is None else max(0.0, (at_ms - now_ms()) / 1000)
        if delay <= 0:
            self.hint(task_type, job_id)
        else:
            asyncio.get_running_loop().call_later(delay, self.hint, task_type, job_id)
