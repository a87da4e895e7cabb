"""Job changes with their own SQL: worker events, orphan rescue, cancellation, operators' changes.

The claim itself and what comes before it (insert, lease renewal, reads) is in repository.py;
which status may follow which is `jobs.NEXT`. Each call here reads the affected rows as `Claim`s
inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE),
decides in Python, and writes one UPDATE per job, guarded by the claim it read. The rules:

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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.engine import Connection

from compute.db.session import write_transaction
from compute.db.tables import dumps, loads
from compute.db.tables import jobs_table as jobs
from compute.db.tables import queue_entries_table as queue_entries
from compute.jobs import TERMINAL, EventType, JobEvent, JobStatus, may_move, now_ms
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


@dataclass(frozen=True)
class Claim:
    """What a transition reads of a job's row under the write lock (fields named as columns).

    The claim itself (attempt, lease token, worker) is what the UPDATE is guarded by and never
    changes within a transaction; `updated` carries status, progress, sequence and errors
    forward from one event of a batch to the next.
    """

    job_id: str
    task_type: str
    status: str
    progress: int
    attempt: int
    max_retries: int
    lease_token: str | None
    event_seq: int
    attempt_errors: str | None  # JSON text, as stored
    worker_id: str | None
    priority: int
    created_at: int
    started_at: int | None

    def updated(self, values: Mapping[str, Any]) -> Claim:
        """The job as the next event of the batch sees it, once `values` (column -> value) apply."""
        return replace(self, **{k: v for k, v in values.items() if k in _EVENT_STATE})


#: What events change that later events of the same batch check.
_EVENT_STATE = frozenset({"status", "progress", "event_seq", "attempt_errors"})
_COLUMNS = tuple(jobs.c[f.name] for f in fields(Claim))


class JobTransitions:
    def __init__(self, engine: Engine, policies: Policies) -> None:
        self.engine = engine
        self.policies = policies
        self.dialect = engine.dialect.name

    def _lock(self, conn: Connection, where: Any) -> dict[str, Claim]:
        stmt = select(*_COLUMNS).where(where)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return {r["job_id"]: Claim(**r) for r in conn.execute(stmt).mappings()}

    # -- worker events -----------------------------------------------------------------------

    def apply_events(self, events: Sequence[JobEvent]) -> list[Outcome]:
        """Apply a batch of worker events in one transaction; one outcome per event."""
        if not events:
            return []
        outcomes: list[Outcome] = []
        with write_transaction(self.engine) as conn:
            read = self._lock(conn, jobs.c.job_id.in_({e.job_id for e in events}))
            current = dict(read)  # each job as the events so far left it
            changes: dict[str, dict[str, Any]] = {}
            for ev in events:
                claim = current.get(ev.job_id)
                outcome, values = self._decide(ev, claim)
                outcomes.append(outcome)
                if claim is not None and values:
                    current[ev.job_id] = claim.updated(values)
                    changes.setdefault(ev.job_id, {}).update(values)
            for job_id, values in changes.items():
                claim = read[job_id]
                conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.job_id == job_id,
                        jobs.c.lease_token == claim.lease_token,
                        jobs.c.attempt == claim.attempt,
                    )
                    .values(**values)
                )
        return outcomes

    def _decide(self, ev: JobEvent, claim: Claim | None) -> tuple[Outcome, dict[str, Any]]:
        """The event's outcome, and the columns it changes (none unless applied)."""
        if claim is None:
            return Outcome(ev, Verdict.REJECTED, reason="unknown job"), {}
        status, task_type = claim.status, claim.task_type
        if not verify(claim.lease_token, ev):
            return Outcome(ev, Verdict.REJECTED, status, "bad signature", task_type), {}
        if ev.attempt != claim.attempt or ev.worker_id != claim.worker_id:
            return Outcome(ev, Verdict.REJECTED, status, "not the current claim", task_type), {}
        terminal_event = ev.event in (EventType.COMPLETED, EventType.FAILED)
        if status != JobStatus.PROCESSING.value:
            # Already finished (or requeued) under this claim: a re-sent result is confirmed again.
            verdict = Verdict.DUPLICATE if terminal_event else Verdict.REJECTED
            return Outcome(
                ev, verdict, status, "job no longer running", task_type, lease_token=claim.lease_token
            ), {}
        if ev.seq <= claim.event_seq:
            return Outcome(ev, Verdict.REJECTED, status, "replayed or out of order", task_type), {}

        now = now_ms()
        happened = ev.timestamp or now  # signed by the claim holder: when it really finished
        values: dict[str, Any] = {"event_seq": ev.seq, "updated_at": now}
        retry_at = None
        if ev.event is EventType.PROGRESS and ev.progress > claim.progress:
            values["progress"] = ev.progress
        elif ev.event is EventType.COMPLETED:
            values.update(
                status=JobStatus.COMPLETED.value,
                progress=100,
                completed_at=happened,
                error_message=None,
                task_output=dumps(ev.task_output),
            )
        elif ev.event is EventType.FAILED:
            failed, retry_at = self._fail(claim, ev.error or "unknown error", ev.retryable, happened)
            values.update(failed)
        return Outcome(
            ev,
            Verdict.APPLIED,
            values.get("status", status),
            task_type=task_type,
            retry_at=retry_at,
            lease_token=claim.lease_token,
            created_at=claim.created_at,
            started_at=claim.started_at,
        ), values

    def _fail(self, claim: Claim, error: str, retryable: bool, now: int) -> tuple[dict[str, Any], int | None]:
        """A failed attempt's columns: requeued with backoff while attempts remain, else failed.

        Returns them and, when requeued, when the job may run again (ms).
        """
        policy = self.policies.for_task(claim.task_type)
        errors = [*(loads(claim.attempt_errors) or []), {"attempt": claim.attempt, "error": error, "at": now}]
        values: dict[str, Any] = {"attempt_errors": dumps(errors)}
        retry = (retryable or policy.retry_plugin_errors) and claim.attempt <= claim.max_retries
        if retry:
            retry_at = now + policy.backoff_ms(claim.attempt)
            values.update(
                status=JobStatus.QUEUED.value,
                next_attempt_at=retry_at,
                worker_id=None,
                lease_expires_at=None,
                error_message=error,
                progress=0,
            )
            return values, retry_at
        values.update(
            status=JobStatus.FAILED.value,
            completed_at=now,
            error_message=error
            if claim.attempt <= 1
            else f"{error} (attempt {claim.attempt} of {claim.max_retries + 1})",
        )
        return values, None

    # -- orphans -------------------------------------------------------------------------------

    def session_leases(self, worker_id: str, session: str) -> LeaseSnapshot:
        """The running claims of one worker session, to see later whether they still renew."""
        stmt = select(jobs.c.job_id, jobs.c.lease_token, jobs.c.lease_expires_at).where(
            jobs.c.status == JobStatus.PROCESSING.value,
            jobs.c.worker_id == worker_id,
            jobs.c.worker_session == session,
        )
        with self.engine.connect() as conn:
            return {
                r.job_id: (r.lease_token, r.lease_expires_at)
                for r in conn.execute(stmt)
                if r.lease_token is not None and r.lease_expires_at is not None
            }

    def rescue_stalled(self, snapshot: LeaseSnapshot, reason: str) -> list[Rescued]:
        """Rescue the claims in `snapshot` whose lease has not moved since it was taken.

        A worker that still runs renews its lease (a new expiry) well within `stall_grace`; a
        claim whose expiry is unchanged after that long belongs to a worker that is gone.
        """
        if not snapshot:
            return []
        unchanged = [
            (jobs.c.job_id == job_id) & (jobs.c.lease_token == token) & (jobs.c.lease_expires_at == expires)
            for job_id, (token, expires) in snapshot.items()
        ]
        return self._rescue((jobs.c.status == JobStatus.PROCESSING.value) & or_(*unchanged), reason)

    def rescue_expired(self) -> list[Rescued]:
        """Jobs whose lease ran out without a heartbeat."""
        now = now_ms()
        where = (jobs.c.status == JobStatus.PROCESSING.value) & (jobs.c.lease_expires_at < now)
        return self._rescue(where, "lease expired without heartbeat")

    def _rescue(self, where: Any, reason: str) -> list[Rescued]:
        rescued: list[Rescued] = []
        with write_transaction(self.engine) as conn:
            for claim in self._lock(conn, where).values():
                now = now_ms()
                error = f"{reason} during attempt {claim.attempt}"
                values, _ = self._fail(claim, error, retryable=True, now=now)
                values["updated_at"] = now
                values.pop("next_attempt_at", None)  # a lost worker is no reason to wait
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == claim.job_id, jobs.c.lease_token == claim.lease_token)
                    .values(**values)
                )
                rescued.append(Rescued(claim.job_id, claim.task_type, values["status"]))
        if rescued:
            log.warning("rescued %d job(s): %s", len(rescued), reason)
        return rescued

    # -- cancellation ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Cancelled | None:
        """Cancel a queued or running job. Returns what it found, or None for an unknown job."""
        with write_transaction(self.engine) as conn:
            claim = self._lock(conn, jobs.c.job_id == job_id).get(job_id)
            if claim is None:
                return None
            if may_move(claim.status, JobStatus.CANCELLED):
                now = now_ms()
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == job_id)
                    .values(
                        status=JobStatus.CANCELLED.value,
                        completed_at=now,
                        updated_at=now,
                        error_message="cancelled",
                        next_attempt_at=None,
                    )
                )
        return Cancelled(claim.status, claim.worker_id, claim.attempt, claim.lease_token)

    # -- operators' changes ----------------------------------------------------------------------

    def reprioritise(self, job_id: str, priority: int) -> Changed | None:
        """Set a queued job's priority (the claim order's first key); other states are left
        alone. None for an unknown job."""
        with write_transaction(self.engine) as conn:
            claim = self._lock(conn, jobs.c.job_id == job_id).get(job_id)
            if claim is None:
                return None
            queued = claim.status == JobStatus.QUEUED.value
            if queued:
                conn.execute(
                    update(jobs).where(jobs.c.job_id == job_id).values(priority=priority, updated_at=now_ms())
                )
                conn.execute(
                    update(queue_entries).where(queue_entries.c.job_id == job_id).values(priority=priority)
                )
        return Changed(claim.status, claim.task_type, claim.priority, queued)

    def retry(self, job_id: str) -> Changed | None:
        """Queue a failed or cancelled job again, as the same job (Oban's retry): a new claim
        gets the next attempt number, `attempt_errors` keeps the history, and the job gets the
        task's retries afresh (`max_retries` counts from the attempts made). Other states are
        left alone. None for an unknown job.

        The old claim's lease token is cleared, so a worker still finishing a cancelled attempt
        can no longer report on the job.
        """
        with write_transaction(self.engine) as conn:
            claim = self._lock(conn, jobs.c.job_id == job_id).get(job_id)
            if claim is None:
                return None
            # A finished job that may be queued again (jobs.NEXT): failed or cancelled.
            retryable = claim.status in TERMINAL and may_move(claim.status, JobStatus.QUEUED)
            if retryable:
                policy = self.policies.for_task(claim.task_type)
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == job_id)
                    .values(
                        status=JobStatus.QUEUED.value,
                        progress=0,
                        started_at=None,
                        completed_at=None,
                        task_output=None,
                        error_message=None,
                        worker_id=None,
                        worker_session=None,
                        lease_token=None,
                        lease_expires_at=None,
                        event_seq=0,
                        next_attempt_at=None,
                        max_retries=claim.attempt + policy.max_retries,
                        updated_at=now_ms(),
                    )
                )
        return Changed(claim.status, claim.task_type, claim.priority, retryable)
