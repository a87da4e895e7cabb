"""Worker job events -> database, in batches; then confirmations and CL Server events.

The MQTT handler only parses and queues. One task drains the queue and applies everything
waiting in one transaction (`JobTransitions.apply_events`), so a burst of completions costs
one commit, not one each. Events that fail their signature, attempt or sequence check are
dropped and counted. A terminal event is confirmed to its worker only after the commit: a
worker re-sends until then, so an event acknowledged by MQTT but lost before the commit is
sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from compute.bus.base import Bus
from compute.db.transitions import JobTransitions, Outcome, Verdict
from compute.jobs import EventType, JobEvent, JobStatus, now_ms
from compute.topics import Confirmation, LegacyJobEvent, MalformedMessage, Topics, encode, parse_job_event

log = logging.getLogger(__name__)

BATCH_MAX = 1000
_TERMINAL = (EventType.COMPLETED, EventType.FAILED)


class EventIngest:
    def __init__(self, transitions: JobTransitions, bus: Bus, topics: Topics,
                 on_change: Callable[[], None], on_requeue: Callable[[str, str, int | None], None]) -> None:
        self.transitions = transitions
        self.bus = bus
        self.topics = topics
        self.on_change = on_change
        self.on_requeue = on_requeue
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        #: Dropped events by reason ("malformed", "bad signature", "replayed or out of order" ...).
        self.rejected: Counter[str] = Counter()
        self.applied = 0
        bus.subscribe(topics.all_job_events, self._on_message, qos=1)

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            event = parse_job_event(payload)
            job_id = topic.rsplit("/", 1)[-1]
            if job_id != event.job_id:
                raise MalformedMessage(f"topic names job {job_id}, payload {event.job_id}")
        except (MalformedMessage, ValueError) as exc:
            self.rejected["malformed"] += 1
            log.warning("dropped malformed job event on %s: %s", topic, exc)
            return
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                self.persist(batch)
            except Exception:
                # The database refused the batch: terminal events stay unconfirmed and
                # their workers send them again.
                log.exception("could not persist %d job events", len(batch))
                await asyncio.sleep(0.5)

    def persist(self, batch: list[JobEvent]) -> list[Outcome]:
        outcomes = self.transitions.apply_events(batch)
        changed = False
        for outcome in outcomes:
            ev = outcome.event
            if outcome.verdict is Verdict.REJECTED:
                self.rejected[outcome.reason] += 1
                log.warning("dropped %s event for job %s from %s: %s", ev.event.value, ev.job_id,
                            ev.worker_id, outcome.reason)
                continue
            if outcome.verdict is Verdict.APPLIED:
                self.applied += 1
                changed = True
                self._publish_legacy(outcome)
                if outcome.status == JobStatus.QUEUED.value:
                    self.on_requeue(outcome.task_type, ev.job_id, outcome.retry_at)
            if ev.event in _TERMINAL and outcome.status is not None:
                confirm = Confirmation(job_id=ev.job_id, status=outcome.status, timestamp=now_ms())
                self.bus.publish(self.topics.worker_confirm(ev.worker_id), encode(confirm), qos=1)
        if changed:
            self.on_change()
        return outcomes

    def _publish_legacy(self, outcome: Outcome) -> None:
        ev = outcome.event
        if ev.event is EventType.PROGRESS and outcome.status != JobStatus.PROCESSING.value:
            return
        legacy = LegacyJobEvent(
            job_id=ev.job_id,
            event_type=outcome.status or JobStatus.PROCESSING.value,
            progress=100 if ev.event is EventType.COMPLETED else ev.progress,
            timestamp=ev.timestamp,
        )
        self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
