"""After the database changed: one path from what a write returned to everyone who must know.

Every write that changes a job returns what it changed (`JobChange`: db/repository.py inserts,
db/transitions.py for everything after the claim), and the part that made the write hands it
here: the submit path, the ingest of worker events, a cancel, an operator's retry or new
priority, a rescue. `announce` then, on the event loop, in this order:

1. counts it (`ServerMetrics`: run and pickup times, retries, rescues);
2. wakes the workers for jobs that became claimable (`Dispatcher`: one hint per task type);
3. publishes CL Server's `inference/events` (with `compute.jobs.sdk_status` names);
4. shows it on this server's live views (`show`: the `ChangeFeed` behind SSE, with Compute's
   own status names, and the retained queue summaries, marked for recomputation).

Steps 1-3 happen once, on the server that made the change. Step 4 is what every server must do
for every change, its own or another's. On PostgreSQL, where several servers may share the
database, every change reaches the live views from the database's notices
(server/live/notice_listener.py), this server's own too (`show_own` False): so each server shows
the changes in the order they committed, whoever made them (shown at once, a server's own change
could come before an earlier one another server committed). On SQLite `announce` shows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from compute.bus.interface import Bus
from compute.jobs import Cause, JobChange, now_ms, sdk_status
from compute.server.flow.dispatch import Dispatcher
from compute.server.live.changes import ChangeFeed
from compute.server.live.queue_summary import QueueReporter
from compute.server.loopsafe import LoopHop
from compute.server.metrics import ServerMetrics
from compute.topics import LegacyJobEvent, Topics, encode


class ChangeAnnouncer:
    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        dispatcher: Dispatcher,
        feed: ChangeFeed,
        queues: QueueReporter,
        metrics: ServerMetrics,
        hop: LoopHop | None = None,
        show_own: bool = True,
    ) -> None:
        """`hop` brings an announcement from a database thread onto the event loop (none: call
        `announce` on the loop); `show_own` False: this server's changes reach its live views
        from the database's notices, like everyone else's."""
        self.show_own = show_own
        self.bus = bus
        self.topics = topics
        self.dispatcher = dispatcher
        self.feed = feed
        self.queues = queues
        self.metrics = metrics
        self._hop = hop or LoopHop()
        #: Changes announced since start.
        self.announced = 0

    def announce(self, changes: Iterable[JobChange | None]) -> None:
        """Act on what a write changed (None: that write changed nothing). Any thread."""
        found = [change for change in changes if change is not None]
        if found:
            self._hop.call(self._announce, found)

    def _announce(self, changes: list[JobChange]) -> None:
        now = now_ms()
        self.announced += len(changes)
        self.metrics.jobs_changed(changes)
        self.dispatcher.wake(changes)
        shown = [
            change if change.timestamp else dataclasses.replace(change, timestamp=now)
            for change in changes
            if change.shown
        ]
        for change in shown:
            legacy = LegacyJobEvent(
                job_id=change.job_id,
                event_type=sdk_status(change.status),
                progress=change.progress,
                timestamp=change.timestamp,
            )
            self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
        if self.show_own:
            self.show(shown)

    def show(self, changes: list[JobChange]) -> None:
        """This server's live views: the change feed, and the queue summaries marked stale."""
        for change in changes:
            if change.cause is Cause.SUBMITTED:
                self.feed.job_stored(change.job_id, change.created_by, change.task_type)
            self.feed.publish(change)
        if changes:
            self.queues.mark_dirty()
