"""Worker job events -> database, in batches; then confirmations and CL Server events.

The MQTT handler only parses and queues. One task drains the queue and applies everything
waiting in one transaction, so a burst of completions costs one commit, not one each.
A terminal event is confirmed to its worker only after the commit: a worker re-sends until
then, so an event acknowledged by MQTT but lost before the commit is sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from compute.bus.base import Bus
from compute.db.repository import JobRepository
from compute.jobs import EventType, JobEvent, JobStatus, now_ms
from compute.topics import (
    Confirmation,
    LegacyJobEvent,
    MalformedMessage,
    Topics,
    encode,
    parse_job_event,
)

log = logging.getLogger(__name__)

BATCH_MAX = 1000
_TERMINAL_STATUS = {EventType.COMPLETED: JobStatus.COMPLETED, EventType.FAILED: JobStatus.FAILED}
#: CL Server clients read the job's status as `event_type`.
_LEGACY_EVENT_TYPE = {
    EventType.STARTED: JobStatus.PROCESSING,
    EventType.PROGRESS: JobStatus.PROCESSING,
    **_TERMINAL_STATUS,
}


class EventIngest:
    def __init__(self, repo: JobRepository, bus: Bus, topics: Topics,
                 on_change: Callable[[], None]) -> None:
        self.repo = repo
        self.bus = bus
        self.topics = topics
        self.on_change = on_change
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.dropped = 0
        self.applied = 0
        bus.subscribe(topics.all_job_events, self._on_message, qos=1)

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            event = parse_job_event(payload)
            job_id = topic.rsplit("/", 1)[-1]
            if job_id != event.job_id:
                raise MalformedMessage(f"topic names job {job_id}, payload {event.job_id}")
        except (MalformedMessage, ValueError) as exc:
            self.dropped += 1
            log.warning("dropped malformed job event on %s: %s", topic, exc)
            return
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                self._persist(batch)
            except Exception:
                # The database refused the batch: terminal events stay unconfirmed and
                # their workers send them again.
                log.exception("could not persist %d job events", len(batch))
                await asyncio.sleep(0.5)

    def _persist(self, batch: list[JobEvent]) -> None:
        results = self.repo.apply_events(_coalesce(batch))
        self.applied += len(results)
        changed = False
        for event, applied in results:
            if applied:
                changed = True
                self._publish_legacy(event)
            status = _TERMINAL_STATUS.get(event.event)
            if status is not None:
                confirm = Confirmation(job_id=event.job_id, status=status.value, timestamp=now_ms())
                self.bus.publish(self.topics.worker_confirm(event.worker_id), encode(confirm), qos=1)
        if changed:
            self.on_change()

    def _publish_legacy(self, event: JobEvent) -> None:
        legacy = LegacyJobEvent(
            job_id=event.job_id,
            event_type=_LEGACY_EVENT_TYPE[event.event].value,
            progress=100 if event.event is EventType.COMPLETED else event.progress,
            timestamp=event.timestamp,
        )
        self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)


def _coalesce(batch: list[JobEvent]) -> list[JobEvent]:
    """Keep every non-progress event, and for progress only the highest per job."""
    best: dict[str, JobEvent] = {}
    others: list[JobEvent] = []
    for ev in batch:
        if ev.event is EventType.PROGRESS:
            prev = best.get(ev.job_id)
            if prev is None or ev.progress > prev.progress:
                best[ev.job_id] = ev
        else:
            others.append(ev)
    # Progress first: a completion in the same batch must land after it.
    return [*best.values(), *others]
