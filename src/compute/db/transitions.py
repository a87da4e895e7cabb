"""State changes after the claim: worker events, orphan rescue, cancellation.

Each call reads the affected rows inside one write transaction (SQLite: BEGIN IMMEDIATE;
PostgreSQL: SELECT ... FOR UPDATE), decides in Python, and writes one guarded UPDATE per job.
The rules:

* an event counts only if its HMAC verifies with the job's current lease token, its attempt
  is the current attempt, and its sequence number is above the last accepted one;
* progress only rises; a terminal state is final;
* a retryable failure (exception, crash, timeout) or a lost worker requeues the job with
  backoff while attempts remain (attempts = max_retries + 1); past that the job fails;
* a lost worker's claim is rescued only when its lease has stopped renewing: expired, or (after
  the worker's verified Last Will) unchanged for `stall_grace`. A Will alone never takes a job
  from a worker that still renews it;
* every failed attempt's error is kept in `attempt_errors`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.engine import Connection

from compute.db.models import jobs_table as jobs
from compute.db.models import queue_entries_table as queue_entries
from compute.db.session import IMMEDIATE
from compute.jobs import OPEN, EventType, JobEvent, JobStatus, now_ms
from compute.policies import Policies
from compute.signing import verify

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    APPLIED = "applied"  # the event moved the job
    DUPLICATE = "duplicate"  # a terminal event for a job already finished: confirm again
    REJECTED = "rejected"  # forged, replayed, stale or unknown: dropped


@dataclass(frozen=True)
class Outcome:
    event: JobEvent
    verdict: Verdict
    #: The job's status after this event (None for rejected events of unknown jobs).
    status: str | None = None
    reason: str = ""
    task_type: str = ""
    #: For a requeued job: when it may run again (ms).
    retry_at: int | None = None
    #: The claim's lease token, for signing the confirmation (verified events only).
    lease_token: str | None = None
    #: The job's creation and the claim's start (ms), for the pickup and run-time metrics.
    created_at: int | None = None
    started_at: int | None = None


@dataclass(frozen=True)
class Rescued:
    job_id: str
    task_type: str
    status: str  # queued (will run again) or failed (no attempts left)


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` found: the status before, and the claim a running job's worker holds."""

    previous: str
    worker_id: str | None
    attempt: int
    lease_token: str | None


@dataclass(frozen=True)
class Changed:
    """What an operator's change (new priority, retry) found and whether it applied."""

    previous: str  # the status before
    task_type: str
    priority: int  # the priority before
    applied: bool


#: A claim as the server saw it: (lease token, lease expiry ms), per job id.
LeaseSnapshot = dict[str, tuple[str, int]]


def renewal_interval(lease_seconds: float) -> float:
    """How often a worker renews its leases: a third of the lease (at least 0.2 s)."""
    return max(0.2, lease_seconds / 3)


def stall_grace(lease_seconds: float) -> float:
    """How long a lease must stay unrenewed, after a Will, before its job is rescued.

    One and a half renewal intervals (half the lease): a live worker renews within one.
    """
    return renewal_interval(lease_seconds) * 1.5


_COLUMNS = (jobs.c.job_id, jobs.c.task_type, jobs.c.status, jobs.c.progress, jobs.c.attempt,
            jobs.c.max_retries, jobs.c.lease_token, jobs.c.event_seq, jobs.c.attempt_errors,
            jobs.c.worker_id, jobs.c.priority, jobs.c.created_at, jobs.c.started_at)


class JobTransitions:
    def __init__(self, engine: Engine, policies: Policies) -> None:
        self.engine = engine
        self.policies = policies
        self.dialect = engine.dialect.name

    def _write(self) -> Any:
        return self.engine.connect().execution_options(**{IMMEDIATE: True})

    def _lock_rows(self, conn: Connection, where: Any) -> dict[str, dict[str, Any]]:
        stmt = select(*_COLUMNS).where(where)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return {r["job_id"]: dict(r) for r in conn.execute(stmt).mappings()}

    # -- worker events -----------------------------------------------------------------------

    def apply_events(self, events: Sequence[JobEvent]) -> list[Outcome]:
        """Apply a batch of worker events in one transaction; one outcome per event."""
        if not events:
            return []
        outcomes: list[Outcome] = []
        with self._write() as conn, conn.begin():
            rows = self._lock_rows(conn, jobs.c.job_id.in_({e.job_id for e in events}))
            changes: dict[str, dict[str, Any]] = {}
            for ev in events:
                outcome = self._decide(ev, rows.get(ev.job_id), changes)
                outcomes.append(outcome)
            for job_id, values in changes.items():
                row = rows[job_id]
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == job_id, jobs.c.lease_token == row["_token"],
                           jobs.c.attempt == row["_attempt"])
                    .values(**values)
                )
        return outcomes

    def _decide(self, ev: JobEvent, row: dict[str, Any] | None,
                changes: dict[str, dict[str, Any]]) -> Outcome:
        if row is None:
            return Outcome(ev, Verdict.REJECTED, reason="unknown job")
        task_type = row["task_type"]
        row.setdefault("_token", row["lease_token"])
        row.setdefault("_attempt", row["attempt"])
        if not verify(row["_token"], ev):
            return Outcome(ev, Verdict.REJECTED, row["status"], "bad signature", task_type)
        if ev.attempt != row["_attempt"] or ev.worker_id != row["worker_id"]:
            return Outcome(ev, Verdict.REJECTED, row["status"], "not the current claim", task_type)
        terminal_event = ev.event in (EventType.COMPLETED, EventType.FAILED)
        if row["status"] != JobStatus.PROCESSING.value:
            # Already finished (or requeued) under this claim: a re-sent result is confirmed again.
            verdict = Verdict.DUPLICATE if terminal_event else Verdict.REJECTED
            return Outcome(ev, verdict, row["status"], "job no longer running", task_type,
                           lease_token=row["_token"])
        if ev.seq <= row["event_seq"]:
            return Outcome(ev, Verdict.REJECTED, row["status"], "replayed or out of order", task_type)

        now = now_ms()
        happened = ev.timestamp or now  # signed by the claim holder: when it really finished
        values = changes.setdefault(ev.job_id, {})
        row["event_seq"] = values["event_seq"] = ev.seq
        values["updated_at"] = now
        retry_at = None
        if ev.event is EventType.PROGRESS and ev.progress > row["progress"]:
            row["progress"] = values["progress"] = ev.progress
        elif ev.event is EventType.COMPLETED:
            row["status"] = values["status"] = JobStatus.COMPLETED.value
            values.update(progress=100, completed_at=happened, error_message=None,
                          task_output=_dumps(ev.task_output))
        elif ev.event is EventType.FAILED:
            retry_at = self._fail(row, values, ev.error or "unknown error", ev.retryable, happened)
        return Outcome(ev, Verdict.APPLIED, row["status"], task_type=task_type, retry_at=retry_at,
                       lease_token=row["_token"], created_at=row["created_at"], started_at=row["started_at"])

    def _fail(self, row: dict[str, Any], values: dict[str, Any], error: str, retryable: bool,
              now: int) -> int | None:
        """Record a failed attempt: requeue with backoff while attempts remain, else fail."""
        policy = self.policies.for_task(row["task_type"])
        errors = json.loads(row["attempt_errors"] or "[]")
        errors.append({"attempt": row["attempt"], "error": error, "at": now})
        row["attempt_errors"] = values["attempt_errors"] = json.dumps(errors)
        retry = (retryable or policy.retry_plugin_errors) and row["attempt"] <= row["max_retries"]
        if retry:
            retry_at = now + policy.backoff_ms(row["attempt"])
            row["status"] = values["status"] = JobStatus.QUEUED.value
            values.update(next_attempt_at=retry_at, worker_id=None, lease_expires_at=None,
                          error_message=error, progress=0)
            return retry_at
        row["status"] = values["status"] = JobStatus.FAILED.value
        values.update(completed_at=now, error_message=error if row["attempt"] <= 1 else
                      f"{error} (attempt {row['attempt']} of {row['max_retries'] + 1})")
        return None

    # -- orphans -------------------------------------------------------------------------------

    def session_leases(self, worker_id: str, session: str) -> LeaseSnapshot:
        """The running claims of one worker session, to see later whether they still renew."""
        stmt = select(jobs.c.job_id, jobs.c.lease_token, jobs.c.lease_expires_at).where(
            jobs.c.status == JobStatus.PROCESSING.value, jobs.c.worker_id == worker_id,
            jobs.c.worker_session == session)
        with self.engine.connect() as conn:
            return {r.job_id: (r.lease_token, r.lease_expires_at) for r in conn.execute(stmt)
                    if r.lease_token is not None and r.lease_expires_at is not None}

    def rescue_stalled(self, snapshot: LeaseSnapshot, reason: str) -> list[Rescued]:
        """Rescue the claims in `snapshot` whose lease has not moved since it was taken.

        A worker that still runs renews its lease (a new expiry) well within `stall_grace`; a
        claim whose expiry is unchanged after that long belongs to a worker that is gone.
        """
        if not snapshot:
            return []
        unchanged = [(jobs.c.job_id == job_id) & (jobs.c.lease_token == token)
                     & (jobs.c.lease_expires_at == expires)
                     for job_id, (token, expires) in snapshot.items()]
        return self._rescue((jobs.c.status == JobStatus.PROCESSING.value) & or_(*unchanged), reason)

    def rescue_expired(self) -> list[Rescued]:
        """Jobs whose lease ran out without a heartbeat."""
        now = now_ms()
        where = (jobs.c.status == JobStatus.PROCESSING.value) & (jobs.c.lease_expires_at < now)
        return self._rescue(where, "lease expired without heartbeat")

    def _rescue(self, where: Any, reason: str) -> list[Rescued]:
        rescued: list[Rescued] = []
        with self._write() as conn, conn.begin():
            rows = self._lock_rows(conn, where)
            for row in rows.values():
                values: dict[str, Any] = {"updated_at": now_ms()}
                error = f"{reason} during attempt {row['attempt']}"
                self._fail(row, values, error, retryable=True, now=values["updated_at"])
                values.pop("next_attempt_at", None)  # a lost worker is no reason to wait
                conn.execute(update(jobs).where(jobs.c.job_id == row["job_id"],
                                                jobs.c.lease_token == row["lease_token"])
                             .values(**values))
                rescued.append(Rescued(row["job_id"], row["task_type"], row["status"]))
        if rescued:
            log.warning("rescued %d job(s): %s", len(rescued), reason)
        return rescued

    # -- cancellation ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Cancelled | None:
        """Cancel a queued or running job. Returns what it found, or None for an unknown job."""
        with self._write() as conn, conn.begin():
            row = self._lock_rows(conn, jobs.c.job_id == job_id).get(job_id)
            if row is None:
                return None
            if row["status"] in OPEN:
                now = now_ms()
                conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(
                    status=JobStatus.CANCELLED.value, completed_at=now, updated_at=now,
                    error_message="cancelled", next_attempt_at=None))
        return Cancelled(row["status"], row["worker_id"], row["attempt"], row["lease_token"])

    # -- operators' changes ----------------------------------------------------------------------

    def reprioritise(self, job_id: str, priority: int) -> Changed | None:
        """Set a queued job's priority (the claim order's first key); other states are left
        alone. None for an unknown job."""
        with self._write() as conn, conn.begin():
            row = self._lock_rows(conn, jobs.c.job_id == job_id).get(job_id)
            if row is None:
                return None
            queued = row["status"] == JobStatus.QUEUED.value
            if queued:
                conn.execute(update(jobs).where(jobs.c.job_id == job_id)
                             .values(priority=priority, updated_at=now_ms()))
                conn.execute(update(queue_entries).where(queue_entries.c.job_id == job_id)
                             .values(priority=priority))
        return Changed(row["status"], row["task_type"], row["priority"], queued)

    def retry(self, job_id: str) -> Changed | None:
        """Queue a failed or cancelled job again, as the same job (Oban's retry): a new claim
        gets the next attempt number, `attempt_errors` keeps the history, and the job gets the
        task's retries afresh (`max_retries` counts from the attempts made). Other states are
        left alone. None for an unknown job.

        The old claim's lease token is cleared, so a worker still finishing a cancelled attempt
        can no longer report on the job.
        """
        with self._write() as conn, conn.begin():
            row = self._lock_rows(conn, jobs.c.job_id == job_id).get(job_id)
            if row is None:
                return None
            retryable = row["status"] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value)
            if retryable:
                policy = self.policies.for_task(row["task_type"])
                conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(
                    status=JobStatus.QUEUED.value, progress=0, started_at=None, completed_at=None,
                    task_output=None, error_message=None, worker_id=None, worker_session=None,
                    lease_token=None, lease_expires_at=None, event_seq=0, next_attempt_at=None,
                    max_retries=row["attempt"] + policy.max_retries, updated_at=now_ms()))
        return Changed(row["status"], row["task_type"], row["priority"], retryable)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
