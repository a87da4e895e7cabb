"""Finished jobs' results, kept until the server confirms it has committed them.

A result goes out over MQTT (QoS 1) and stays here. Each reconnect, and each RESEND
interval, sends the unconfirmed ones again; after CONFIRM_TIMEOUT, or at once when the
broker is unreachable, the worker applies the result to the database itself through the same
verified transition the server uses (the event is signed with the claim's lease token), so a
result is never lost and never applied twice.

A confirmation counts only if it is signed with the claim's lease token for the result's
attempt (signing.verify_confirmation): the server knows the token, nobody else on the broker
does. Anything else is counted, logged at a limited rate and ignored; the result stays until a
real confirmation or until the database itself took it (or says the attempt is over). A result
that cannot be written (database locked) also stays, and is tried again on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from compute.bus.interface import Bus
from compute.db.rules import Verdict
from compute.db.transitions import JobTransitions
from compute.errors import first_line
from compute.jobs import EventType, JobEvent, now_ms, sdk_status
from compute.logs import LogLimiter
from compute.topics import LegacyJobEvent, MalformedMessage, Topics, encode, parse_confirmation
from compute.worker.attempt import Attempt
from compute.worker.dbretry import DB_ERRORS

log = logging.getLogger(__name__)
limited = LogLimiter(log)

RESEND_INTERVAL = 2.0  # seconds
CONFIRM_TIMEOUT = 10.0  # seconds before the worker writes the result itself


@dataclass
class _Pending:
    attempt: Attempt
    event: JobEvent
    first_sent: float


class ResultOutbox:
    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        transitions: JobTransitions,
        worker_id: str,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.transitions = transitions
        self.confirm_timeout = confirm_timeout
        self.pending: dict[str, _Pending] = {}
        #: Set whenever `pending` empties (what `settle` waits for).
        self._empty = asyncio.Event()
        self._empty.set()
        self.written_directly = 0
        #: Confirmations ignored: malformed, unsigned, forged or for another attempt.
        self.rejected = 0
        bus.subscribe(topics.worker_confirm(worker_id), self._on_confirm, qos=1)
        bus.on_connect(self.resend_all)

    def send(self, attempt: Attempt, event: JobEvent) -> None:
        """Publish `attempt`'s terminal `event` and keep it until it is safe."""
        # Kept first: whatever happens next, the result is not forgotten until it is safe.
        self.pending[attempt.job_id] = _Pending(attempt, event, time.monotonic())
        self._empty.clear()
        if not attempt.publish(event):
            self._write_directly(event)

    def held_leases(self) -> list[tuple[str, str]]:
        """(job_id, lease_token) of unconfirmed results: their claims must not expire meanwhile,
        or the server would rescue a finished job and run it again."""
        return [(job_id, p.attempt.lease_token) for job_id, p in self.pending.items()]

    def _on_confirm(self, _topic: str, payload: bytes, _retained: bool) -> None:
        try:
            c = parse_confirmation(payload)
        except MalformedMessage as exc:
            self.rejected += 1
            limited.warning("malformed", "ignored a malformed confirmation: %s", str(exc)[:200])
            return
        pending = self.pending.get(c["job_id"])
        if pending is None:
            return  # a second confirmation of a result already safe
        if not pending.attempt.verifies_confirmation(c):
            self.rejected += 1
            limited.warning(
                "forged",
                "ignored a confirmation for job %s that does not verify; the result "
                "stays until the server or the database has it",
                c["job_id"][:100],
            )
            return
        self._forget(c["job_id"])

    def _forget(self, job_id: str) -> None:
        self.pending.pop(job_id, None)
        if not self.pending:
            self._empty.set()

    async def settle(self, timeout: float) -> bool:
        """Wait up to `timeout` for the server to confirm everything pending (not while the
        broker is unreachable: nothing would come). True when nothing is left."""
        if self.pending and self.bus.connected:
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except TimeoutError:
                pass
        return not self.pending

    def resend_all(self) -> None:
        for p in list(self.pending.values()):
            p.attempt.publish(p.event)

    def _write_directly(self, event: JobEvent) -> bool:
        """Apply the result to the database; True once it is settled (applied, or the attempt is over)."""
        try:
            [outcome] = self.transitions.apply_events([event])
        except DB_ERRORS as exc:
            limited.warning(
                "db",
                "job %s: could not write the result (%s); it stays pending",
                event.job_id,
                first_line(exc),
                extra={"job_id": event.job_id, "worker_id": event.worker_id},
            )
            return False
        except Exception:
            limited.exception("write", "job %s: could not write the result; it stays pending", event.job_id)
            return False
        self._forget(event.job_id)
        self.written_directly += 1
        log.info(
            "job %s: result written to the database by the worker (%s%s)",
            event.job_id,
            outcome.verdict.value,
            f": {outcome.reason}" if outcome.reason else "",
            extra={"job_id": event.job_id, "worker_id": event.worker_id},
        )
        if outcome.verdict is Verdict.APPLIED and outcome.status is not None:
            # The server never saw this change: tell CL Server clients ourselves (best effort).
            legacy = LegacyJobEvent(
                job_id=event.job_id,
                event_type=sdk_status(outcome.status),
                progress=100 if event.event is EventType.COMPLETED else 0,
                timestamp=now_ms(),
            )
            self.bus.publish(self.topics.legacy_events, encode(legacy), qos=1)
        return True

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
                limited.exception("pass", "result outbox pass failed")

    def flush(self) -> None:
        """At shutdown: write every unconfirmed result to the database."""
        for p in list(self.pending.values()):
            self._write_directly(p.event)
