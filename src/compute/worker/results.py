"""Finished jobs' results, kept until the server confirms it has committed them.

A result goes out over MQTT (QoS 1) and stays here. Each reconnect, and each RESEND
interval, sends the unconfirmed ones again; after CONFIRM_TIMEOUT, or at once when the
broker is unreachable, the worker applies the result to the database itself through the same
verified transition the server uses (the event is signed with the claim's lease token), so a
result is never lost and never applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from compute.bus.base import Bus
from compute.db.transitions import JobTransitions
from compute.jobs import JobEvent
from compute.topics import MalformedMessage, Topics, encode, job_event_payload, parse_confirmation

log = logging.getLogger(__name__)

RESEND_INTERVAL = 2.0  # seconds
CONFIRM_TIMEOUT = 10.0  # seconds before the worker writes the result itself


@dataclass
class _Pending:
    event: JobEvent
    task_type: str
    lease_token: str
    first_sent: float


class ResultOutbox:
    def __init__(self, bus: Bus, topics: Topics, transitions: JobTransitions, worker_id: str,
                 confirm_timeout: float = CONFIRM_TIMEOUT) -> None:
        self.bus = bus
        self.topics = topics
        self.transitions = transitions
        self.confirm_timeout = confirm_timeout
        self.pending: dict[str, _Pending] = {}
        self.written_directly = 0
        bus.subscribe(topics.worker_confirm(worker_id), self._on_confirm, qos=1)
        bus.on_connect(self.resend_all)

    def send(self, event: JobEvent, task_type: str, lease_token: str) -> None:
        if self._publish(event, task_type):
            self.pending[event.job_id] = _Pending(event, task_type, lease_token, time.monotonic())
        else:
            self._write_directly(event)

    def held_leases(self) -> list[tuple[str, str]]:
        """(job_id, lease_token) of unconfirmed results: their claims must not expire meanwhile,
        or the server would rescue a finished job and run it again."""
        return [(job_id, p.lease_token) for job_id, p in self.pending.items()]

    def _publish(self, event: JobEvent, task_type: str) -> bool:
        topic = self.topics.job_event(task_type, event.job_id)
        return self.bus.publish(topic, encode(job_event_payload(event, task_type)), qos=1)

    def _on_confirm(self, _topic: str, payload: bytes, _retained: bool) -> None:
        try:
            confirmation = parse_confirmation(payload)
        except MalformedMessage as exc:
            log.warning("dropped malformed confirmation: %s", exc)
            return
        self.pending.pop(confirmation["job_id"], None)

    def resend_all(self) -> None:
        for p in list(self.pending.values()):
            self._publish(p.event, p.task_type)

    def _write_directly(self, event: JobEvent) -> None:
        try:
            [outcome] = self.transitions.apply_events([event])
        except Exception:
            log.exception("job %s: could not write the result; it stays pending", event.job_id)
            return
        self.pending.pop(event.job_id, None)
        self.written_directly += 1
        log.info("job %s: result written to the database by the worker (%s%s)", event.job_id,
                 outcome.verdict.value, f": {outcome.reason}" if outcome.reason else "")

    def check(self) -> None:
        now = time.monotonic()
        for p in list(self.pending.values()):
            if now - p.first_sent >= self.confirm_timeout or not self.bus.connected:
                self._write_directly(p.event)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RESEND_INTERVAL)
            try:
                self.resend_all()
                self.check()
            except Exception:
                log.exception("result outbox pass failed")

    def flush(self) -> None:
        """At shutdown: write every unconfirmed result to the database."""
        for p in list(self.pending.values()):
            self._write_directly(p.event)
