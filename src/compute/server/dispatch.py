"""After a job row commits: publish the "job available" hint and the CL Server event."""

from __future__ import annotations

import logging
from collections.abc import Callable

from compute.bus.base import Bus
from compute.db.repository import JobRecord
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
        hint = JobAvailable(job_id=job.job_id, task_type=job.task_type, priority=job.priority,
                            timestamp=job.created_at)
        if not self.bus.publish(self.topics.job_available(job.task_type), encode(hint), qos=1):
            self.unsent += 1
            log.warning("broker unreachable: job %s waits for a worker sweep", job.job_id)
        legacy = LegacyJobEvent(job_id=job.job_id, event_type="queued", progress=0,
                                timestamp=job.created_at)
        self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
        self.on_change()
