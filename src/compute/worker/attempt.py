"""One claim of a job, as the worker holds it from claim to confirmation.

The claim (worker/loop.py) makes an Attempt; the runner (worker/runner.py) reports through it
while the plugin runs; the result outbox (worker/results.py) keeps it until the server confirms
the result. Everything the worker says about the job goes through `event()`, which numbers and
signs it with the claim's lease token, and `publish()`, the one way an event reaches the bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compute.bus.interface import Bus
from compute.db.repository import JobRecord
from compute.jobs import EventType, JobEvent, now_ms
from compute.signing import signature, verify_cancel, verify_confirmation
from compute.topics import CancelRequest, Confirmation, Topics, encode, job_event_payload


@dataclass
class Attempt:
    job: JobRecord
    worker_id: str
    bus: Bus
    topics: Topics
    #: Sequence number of the last event made; the server drops events that do not move it on.
    seq: int = field(default=0)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def task_type(self) -> str:
        return self.job.task_type

    @property
    def number(self) -> int:
        """The job's attempt number for this claim."""
        return self.job.attempt

    @property
    def lease_token(self) -> str:
        return self.job.lease_token or ""

    def log_fields(self) -> dict[str, object]:
        """Structured-log fields (`extra`) for lines about this attempt: JSON logs carry them."""
        return {
            "job_id": self.job_id,
            "worker_id": self.worker_id,
            "task_type": self.task_type,
            "attempt": self.number,
        }

    def event(self, kind: EventType, **fields: Any) -> JobEvent:
        """A signed event of this claim, with the next sequence number."""
        self.seq += 1
        unsigned = JobEvent(
            job_id=self.job_id,
            worker_id=self.worker_id,
            event=kind,
            timestamp=now_ms(),
            attempt=self.number,
            seq=self.seq,
            **fields,
        )
        return JobEvent(**{**unsigned.__dict__, "sig": signature(self.lease_token, unsigned)})

    def publish(self, event: JobEvent) -> bool:
        """Send one of this claim's events (QoS 1); False when the bus could not take it."""
        topic = self.topics.job_event(self.task_type, self.job_id)
        return self.bus.publish(topic, encode(job_event_payload(event, self.task_type)), qos=1)

    def verifies_cancel(self, request: CancelRequest) -> bool:
        """True if the server signed `request` for this claim (its lease token and attempt)."""
        return (
            request["job_id"] == self.job_id
            and request["attempt"] == self.number
            and verify_cancel(
                self.lease_token, request["job_id"], request["attempt"], request["timestamp"], request["sig"]
            )
        )

    def verifies_confirmation(self, confirmation: Confirmation) -> bool:
        """True if the server signed `confirmation` for this claim's result."""
        c = confirmation
        return (
            c["job_id"] == self.job_id
            and c["attempt"] == self.number
            and verify_confirmation(
                self.lease_token, c["job_id"], c["attempt"], c["status"], c["timestamp"], c["sig"]
            )
        )
