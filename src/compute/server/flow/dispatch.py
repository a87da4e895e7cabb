"""Hints ("job available") and CL Server's `inference/events`, after the database changed.

Hints go out after a job commits, is requeued, or is rescued from a lost worker. Every change of a
job's status (new, requeued, rescued, failed by a rescue, cancelled, finished) is mirrored on
`inference/events` with CL Server's names (`compute.jobs.sdk_status`), and given to the live
views (`ChangeFeed`, SSE) with Compute's own.
"""

from __future__ import annotations

import asyncio
import logging

from compute.bus.interface import Bus
from compute.db.repository import JobRecord
from compute.jobs import JobStatus, now_ms, sdk_status
from compute.logs import LogLimiter
from compute.server.live.changes import ChangeFeed, JobChange
from compute.server.live.queue_summary import QueueReporter
from compute.topics import JobAvailable, LegacyJobEvent, Topics, encode

log = logging.getLogger(__name__)
limited = LogLimiter(log)


class Dispatcher:
    def __init__(self, bus: Bus, topics: Topics, queues: QueueReporter, feed: ChangeFeed) -> None:
        """`bus` may be published on from database threads (the server gives it a LoopSafeBus)."""
        self.bus = bus
        self.topics = topics
        self.queues = queues
        self.feed = feed
        #: Hints that could not be sent (broker down); the workers' sweep still finds the jobs.
        self.unsent = 0

    def jobs_added(self, jobs: list[JobRecord]) -> None:
        """New jobs committed together: each one's `queued` event, and one hint per task type
        (the workers it wakes drain the queue, so one hint serves the whole batch)."""
        hinted: set[str] = set()
        for job in jobs:
            self.feed.job_stored(job.job_id, job.created_by, job.task_type)
            if job.task_type not in hinted:
                hinted.add(job.task_type)
                self.hint(job.task_type, job.job_id, job.priority, job.created_at)
            self.job_changed(
                job.job_id, JobStatus.QUEUED.value, timestamp=job.created_at, task_type=job.task_type
            )
        self.queues.mark_dirty()

    def job_changed(
        self, job_id: str, status: str, progress: int = 0, timestamp: int = 0, task_type: str = ""
    ) -> None:
        """Tell CL Server clients (`inference/events`) and live views that a job's status is now
        `status` (with its `task_type` when known: live views look it up otherwise)."""
        timestamp = timestamp or now_ms()
        legacy = LegacyJobEvent(
            job_id=job_id, event_type=sdk_status(status), progress=progress, timestamp=timestamp
        )
        self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
        self.feed.publish(JobChange(job_id, status, progress, timestamp, task_type))

    def hint(self, task_type: str, job_id: str = "", priority: int = 5, timestamp: int = 0) -> None:
        payload = JobAvailable(
            job_id=job_id, task_type=task_type, priority=priority, timestamp=timestamp or now_ms()
        )
        if not self.bus.publish(self.topics.job_available(task_type), encode(payload), qos=1):
            self.unsent += 1
            limited.warning("hint unsent", "broker unreachable: %s job waits for a worker sweep", task_type)

    def hint_at(self, task_type: str, job_id: str, at_ms: int | None) -> None:
        """A hint now, or when a requeued job's backoff ends."""
        delay = 0.0 if at_ms is None else max(0.0, (at_ms - now_ms()) / 1000)
        if delay <= 0:
            self.hint(task_type, job_id)
        else:
            asyncio.get_running_loop().call_later(delay, self.hint, task_type, job_id)
