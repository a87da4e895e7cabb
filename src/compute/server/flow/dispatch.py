"""Hints ("job available"): the workers told that a job of their task type may be claimed.

A hint only wakes workers; they claim from the database, the most urgent job first, so a lost,
duplicated or reordered hint is harmless. `wake` sends one hint per task type for the jobs that
became claimable together (the workers it wakes drain the queue), and a requeued job's hint
when its backoff ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from compute.bus.interface import Bus
from compute.jobs import JobChange, now_ms
from compute.logs import LogLimiter
from compute.topics import JobAvailable, Topics, encode

log = logging.getLogger(__name__)
limited = LogLimiter(log)


class Dispatcher:
    def __init__(self, bus: Bus, topics: Topics) -> None:
        """`bus` may be published on from database threads (the server gives it a LoopSafeBus)."""
        self.bus = bus
        self.topics = topics
        #: Hints that could not be sent (broker down); the workers' sweep still finds the jobs.
        self.unsent = 0

    def wake(self, changes: Iterable[JobChange]) -> None:
        """Hints for the jobs these changes made claimable: now, one per task type (`wake_at`
        0), or each when its retry's backoff ends. On the event loop."""
        hinted: set[str] = set()
        for change in changes:
            if change.wake_at is None:
                continue
            if change.wake_at:
                # `wake_at` and `timestamp` are the database's times: the backoff between them,
                # not `wake_at` itself, is what this server's clock may measure.
                at = change.wake_at
                if change.timestamp:
                    at = now_ms() + max(0, change.wake_at - change.timestamp)
                self.hint_at(change.task_type, change.job_id, at)
            elif change.task_type not in hinted:
                hinted.add(change.task_type)
                self.hint(change.task_type, change.job_id, change.priority, change.timestamp)

    def hint(self, task_type: str, job_id: str = "", priority: int = 5, timestamp: int = 0) -> None:
        payload = JobAvailable(
            job_id=job_id, task_type=task_type, priority=priority, timestamp=timestamp or now_ms()
        )
        if not self.bus.publish(self.topics.job_available(task_type), encode(payload), qos=1):
            self.unsent += 1
            limited.warning("hint unsent", "broker unreachable: %s job waits for a worker sweep", task_type)

    def hint_at(self, task_type: str, job_id: str, at_ms: int | None) -> None:
        """A hint now, or when a requeued job's backoff ends. On the event loop."""
        delay = 0.0 if at_ms is None else max(0.0, (at_ms - now_ms()) / 1000)
        if delay <= 0:
            self.hint(task_type, job_id)
        else:
            asyncio.get_running_loop().call_later(delay, self.hint, task_type, job_id)
