"""Keeps the retained per-task queue summary (`<root>/queues/<task>`) current.

Whatever changes a job's status calls `mark_dirty()` (from the event loop or a database thread);
`run()` then recomputes the summary from the database at most every MIN_INTERVAL. With several
servers, only the one that holds the sweep lease publishes (`when`): each would publish the same
summary, from the same database, once per change.
"""

from __future__ import annotations

import asyncio
import logging

from compute.bus.interface import Bus
from compute.db.repository import JobRepository, QueueSummary
from compute.jobs import now_ms
from compute.server.loopsafe import LoopHop
from compute.server.sweeps.periodic import Gate, always
from compute.topics import QueueState, Topics, encode

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5  # seconds between recomputations, however busy
AGE_REFRESH = 5.0  # seconds: refresh "oldest waiting age" while jobs wait


class QueueReporter:
    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        repo: JobRepository,
        hop: LoopHop | None = None,
        when: Gate = always,
    ) -> None:
        """`hop` brings a `mark_dirty` from a database thread onto the loop (none: call it on the
        loop); `when` says whether this server publishes the summaries now."""
        self.repo = repo
        self.when = when
        self.bus = bus
        self.topics = topics
        self._hop = hop or LoopHop()
        self._dirty = asyncio.Event()
        self._last: dict[str, tuple[int, int]] = {}
        self._waiting = False
        bus.on_connect(self.mark_dirty)

    def mark_dirty(self) -> None:
        """Some job changed status: recompute the summary soon. Any thread."""
        self._hop.call(self._dirty.set)

    @property
    def dirty(self) -> bool:
        """Whether a recomputation is due."""
        return self._dirty.is_set()

    async def run(self) -> None:
        while True:
            try:
                # Idle and empty: sleep until something changes (no statements while idle).
                timeout = AGE_REFRESH if self._waiting else None
                await asyncio.wait_for(self._dirty.wait(), timeout)
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self.when():
                # Another server publishes; when this one takes over it starts from nothing.
                self._last.clear()
                self._waiting = False
                continue
            try:
                await self.publish_now()
            except Exception:
                log.exception("queue summary failed")
            await asyncio.sleep(MIN_INTERVAL)

    async def publish_now(self) -> None:
        """Recompute the summary and publish what changed (one pass of `run`)."""
        # Read on a thread: a stalled database must not stall the event loop.
        self._publish(await asyncio.to_thread(self.repo.queue_summary))

    def _publish(self, summary: list[QueueSummary]) -> None:
        now = now_ms()
        current = {s.task_type: s for s in summary}
        self._waiting = any(s.queued for s in current.values())
        for task_type in set(current) | set(self._last):
            s = current.get(task_type)
            queued, running = (s.queued, s.running) if s else (0, 0)
            oldest = s.oldest_queued_at if s else None
            if (queued, running) == self._last.get(task_type) and not queued:
                continue
            state = QueueState(
                task_type=task_type,
                queued=queued,
                running=running,
                oldest_queued_age_ms=None if oldest is None else max(0, now - oldest),
                timestamp=now,
            )
            if self.bus.publish(self.topics.queue(task_type), encode(state), qos=1, retain=True):
                self._last[task_type] = (queued, running)
