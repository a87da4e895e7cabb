"""Worker job events -> database, in batches; then signed confirmations and CL Server events.

The MQTT handler only parses and queues (a bounded queue: a flood cannot grow the server without
limit; a dropped result is re-sent by its worker). One task drains the queue and applies
everything waiting in one transaction (`JobTransitions.apply_events`), so a burst of completions
costs one commit, not one each, and what the batch changed goes to the announcer in one piece.
Events that fail their signature, attempt or sequence check are dropped and counted, and logged
at a limited rate. A completion's outputs that a remote worker sent are promoted into the job
folder right after the commit, before anyone is told (files/staging.py). A terminal event is
confirmed to its worker only after the commit (and that promotion), signed with the claim's
lease token so that nobody else can make the worker forget a result: a worker re-sends until
then, so an event acknowledged by MQTT but lost before the commit is sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from compute.bus.interface import Bus
from compute.db.rules import Outcome, Verdict
from compute.db.transitions import JobTransitions
from compute.files.staging import OutputStaging
from compute.jobs import FINAL_EVENTS, EventType, JobEvent, JobStatus, now_ms
from compute.logs import LogLimiter
from compute.server.flow.announcer import ChangeAnnouncer
from compute.signing import confirmation_signature
from compute.topics import MAX_PAYLOAD_BYTES, Confirmation, MalformedMessage, Topics, encode, parse_job_event

log = logging.getLogger(__name__)
limited = LogLimiter(log)

BATCH_MAX = 1000
#: Events waiting for the database at most; beyond it new ones are dropped (workers re-send results).
QUEUE_MAX = 20_000


class EventIngest:
    def __init__(
        self,
        transitions: JobTransitions,
        bus: Bus,
        topics: Topics,
        announcer: ChangeAnnouncer,
        staging: OutputStaging,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.transitions = transitions
        self.staging = staging
        #: Largest event read (topics.event_payload_limit of MAX_RESULT_BYTES); larger are dropped.
        self.max_payload = max_payload
        self.bus = bus
        self.topics = topics
        self.announcer = announcer
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(QUEUE_MAX)
        #: Dropped events by reason ("malformed", "bad signature", "replayed or out of order" ...).
        self.rejected: Counter[str] = Counter()
        self.applied = 0
        #: Verified events the job had already gone past: with several servers, every server
        #: receives every event and all but the first find it applied (INTERNALS, "Several
        #: servers"); a worker's re-sent result counts here too.
        self.seen = 0
        bus.subscribe(topics.all_job_events, self._on_message, qos=1)

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            event = parse_job_event(payload, self.max_payload)
            job_id = topic.rsplit("/", 1)[-1]
            if job_id != event.job_id:
                raise MalformedMessage(f"topic names job {job_id}, payload {event.job_id}")
        except (MalformedMessage, ValueError) as exc:
            self.rejected["malformed"] += 1
            limited.warning(
                "malformed",
                "dropped malformed job event on %s: %s",
                topic[:200],
                str(exc)[:200],
                extra={"topic": topic[:200]},
            )
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.rejected["queue full"] += 1
            limited.warning("queue full", "dropped a job event: %d events wait for the database", QUEUE_MAX)

    async def run(self) -> None:
        """Persist what waits, a batch at a time, until cancelled."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self.persist(batch)

    async def persist(self, batch: list[JobEvent]) -> list[Outcome]:
        """Apply `batch` in one transaction, then announce what changed and confirm its terminal
        events. A database that refuses the batch is logged (and waited out for a moment): its
        terminal events stay unconfirmed and their workers send them again."""
        try:
            # On a thread: a locked database must not stall the loop (HTTP, MQTT keepalives) for
            # its busy timeout.
            outcomes = await asyncio.to_thread(self._apply, batch)
        except Exception:
            limited.exception("persist", "could not persist %d job events", len(batch))
            await asyncio.sleep(0.5)
            return []
        return self._handle(outcomes)

    def _apply(self, batch: list[JobEvent]) -> list[Outcome]:
        """Commit the batch, then promote the staged outputs of the jobs it completed (also for a
        re-sent completion: a promotion cut short by a restart is finished then). Blocking."""
        outcomes = self.transitions.apply_events(batch)
        for o in outcomes:
            if o.event.event is EventType.COMPLETED and o.status == JobStatus.COMPLETED.value:
                try:
                    self.staging.promote_if_staged(o.event.job_id, o.event.attempt)
                except OSError:  # the file routes and the staging sweep try again
                    limited.exception("promote", "job %s: could not promote its outputs", o.event.job_id)
        return outcomes

    def _handle(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Rejections counted, what the batch changed announced, terminal events confirmed."""
        for outcome in outcomes:
            ev = outcome.event
            if outcome.verdict is Verdict.REJECTED:
                self.rejected[outcome.reason] += 1
                limited.warning(
                    outcome.reason,
                    "dropped %s event for job %s from %s: %s",
                    ev.event.value,
                    ev.job_id[:100],
                    ev.worker_id[:100],
                    outcome.reason,
                    extra={"job_id": ev.job_id[:100], "worker_id": ev.worker_id[:100]},
                )
            elif outcome.verdict is Verdict.APPLIED:
                self.applied += 1
            else:
                self.seen += 1
        self.announcer.announce(outcome.change for outcome in outcomes)
        for outcome in outcomes:
            ev = outcome.event
            if ev.event in FINAL_EVENTS and outcome.status is not None and outcome.lease_token:
                self._confirm(ev, outcome.status, outcome.lease_token)
        return outcomes

    def _confirm(self, ev: JobEvent, status: str, lease_token: str) -> None:
        now = now_ms()
        sig = confirmation_signature(lease_token, ev.job_id, ev.attempt, status, now)
        confirm = Confirmation(job_id=ev.job_id, attempt=ev.attempt, status=status, timestamp=now, sig=sig)
        self.bus.publish(self.topics.worker_confirm(ev.worker_id), encode(confirm), qos=1)
