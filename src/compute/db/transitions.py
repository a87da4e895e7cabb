"""Job changes after the claim, in SQL: worker events, orphan rescue, cancellation, operators' changes.

The claim itself and what comes before it (insert, lease renewal, reads) is in repository.py;
which status may follow which is `jobs.NEXT`; what an event or a lost worker does to a job is
decided by rules.py. Each call here reads the affected rows as `Claim`s inside one write
transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE), lets the rules decide,
writes one UPDATE per job, guarded by the claim it read, and returns what changed (`JobChange`)
for the server to announce.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.engine import Connection

from compute import observers
from compute.db.leases import database_now_ms
from compute.db.notices import notify
from compute.db.rules import Claim, LeaseSnapshot, Outcome, decide, failed_attempt
from compute.db.session import write_transaction
from compute.db.tables import jobs_table as jobs
from compute.db.tables import queue_entries_table as queue_entries
from compute.jobs import TERMINAL, Cause, JobChange, JobEvent, JobStatus, may_move
from compute.policies import Policies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` found: the status before, and the claim a running job's worker holds."""

    previous: str
    worker_id: str | None
    attempt: int
    lease_token: str | None
    #: The cancellation (None when the job had finished already and was left as it was).
    change: JobChange | None = None


@dataclass(frozen=True)
class Changed:
    """What an operator's change (new priority, retry) found and whether it applied."""

    previous: str  # the status before
    task_type: str
    priority: int  # the priority before
    applied: bool
    change: JobChange | None = None


_COLUMNS = tuple(jobs.c[f.name] for f in fields(Claim))
#: The label of the database's time in `_lock`'s rows.
_NOW = "database_now"


@functools.cache
def _guarded_update(columns: tuple[str, ...]) -> Any:
    """UPDATE jobs SET <columns> for one job, guarded by the claim (job, lease token, attempt);
    parameters `k_job_id`, `k_token`, `k_attempt` and `v_<column>`. Made once per column set."""
    return (
        update(jobs)
        .where(
            jobs.c.job_id == bindparam("k_job_id"),
            jobs.c.lease_token == bindparam("k_token"),
            jobs.c.attempt == bindparam("k_attempt"),
        )
        .values({name: bindparam(f"v_{name}") for name in columns})
    )


class JobTransitions:
    def __init__(
        self, engine: Engine, policies: Policies, max_result_bytes: int | None = None, *, origin: str = ""
    ) -> None:
        """`origin`: who writes (a server's COMPUTE_SERVER_ID, a worker's id), named in the
        changes told to the deployment's servers (db/notices.py) in each write's transaction."""
        self.engine = engine
        self.origin = origin
        self.policies = policies
        #: Results larger than this (task_output as JSON) fail their job instead of being stored.
        self.max_result_bytes = max_result_bytes
        self.dialect = engine.dialect.name

    def _lock(self, conn: Connection, where: Any) -> tuple[dict[str, Claim], int]:
        """The rows of `where` as claims, locked, and the database's time (ms) read with them:
        every time a transition writes or compares is the database's, never this host's, whose
        clock may be seconds off another's (0 when no row matched: nothing is written then)."""
        stmt = select(*_COLUMNS, database_now_ms(self.dialect).label(_NOW)).where(where)
        if self.dialect == "postgresql":
            # Rows locked in one order by everyone: several servers apply the same events
            # (each receives them all), and two batches locking a pair of jobs in opposite
            # orders would deadlock.
            stmt = stmt.order_by(jobs.c.job_id).with_for_update()
        claims: dict[str, Claim] = {}
        now = 0
        for r in conn.execute(stmt).mappings():
            now = max(now, r[_NOW])
            claims[r["job_id"]] = Claim(**{k: v for k, v in r.items() if k != _NOW})
        return claims, now

    # -- worker events -----------------------------------------------------------------------

    def apply_events(self, events: Sequence[JobEvent]) -> list[Outcome]:
        """Apply a batch of worker events in one transaction; one outcome per event."""
        if not events:
            return []
        outcomes: list[Outcome] = []
        with write_transaction(self.engine) as conn:
            read, now = self._lock(conn, jobs.c.job_id.in_({e.job_id for e in events}))
            current = dict(read)  # each job as the events so far left it
            changes: dict[str, dict[str, Any]] = {}
            for ev in events:
                claim = current.get(ev.job_id)
                policy = self.policies.for_task(claim.task_type if claim is not None else "")
                outcome, values = decide(ev, claim, policy, now, self.max_result_bytes)
                outcomes.append(outcome)
                if claim is not None and values:
                    current[ev.job_id] = claim.updated(values)
                    changes.setdefault(ev.job_id, {}).update(values)
            # One UPDATE per job, guarded by the claim it read; jobs whose events set the same
            # columns (every `completed` of a burst, say) share one prepared statement, sent as one
            # executemany. Building a statement per job was half of this method's CPU.
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for job_id, values in changes.items():
                claim = read[job_id]
                row = {f"v_{name}": value for name, value in values.items()}
                row.update(k_job_id=job_id, k_token=claim.lease_token, k_attempt=claim.attempt)
                groups.setdefault(tuple(sorted(values)), []).append(row)
            for columns, rows in groups.items():
                conn.execute(_guarded_update(columns), rows)
            notify(conn, self.origin, (outcome.change for outcome in outcomes))
        for observer in observers.events_applied:
            observer(outcomes)
        return outcomes

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

    def rescue_stalled(self, snapshot: LeaseSnapshot, reason: str) -> list[JobChange]:
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

    def rescue_expired(self) -> list[JobChange]:
        """Jobs whose lease ran out without a heartbeat: expired by the database's clock, which
        also set the expiry (the claim, the renewals), so no two hosts' clocks are compared."""
        now = database_now_ms(self.dialect)
        where = (jobs.c.status == JobStatus.PROCESSING.value) & (jobs.c.lease_expires_at < now)
        return self._rescue(where, "lease expired without heartbeat")

    def _rescue(self, where: Any, reason: str) -> list[JobChange]:
        rescued: list[JobChange] = []
        with write_transaction(self.engine) as conn:
            claims, now = self._lock(conn, where)
            for claim in claims.values():
                error = f"{reason} during attempt {claim.attempt}"
                policy = self.policies.for_task(claim.task_type)
                values, _ = failed_attempt(claim, error, retryable=True, now=now, policy=policy)
                values["updated_at"] = now
                values.pop("next_attempt_at", None)  # a lost worker is no reason to wait
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == claim.job_id, jobs.c.lease_token == claim.lease_token)
                    .values(**values)
                )
                status = values["status"]
                rescued.append(
                    JobChange(
                        claim.job_id,
                        status,
                        timestamp=now,
                        task_type=claim.task_type,
                        cause=Cause.RESCUED,
                        priority=claim.priority,
                        wake_at=0 if status == JobStatus.QUEUED.value else None,
                        attempt=claim.attempt,
                    )
                )
            notify(conn, self.origin, rescued)
        if rescued:
            log.warning("rescued %d job(s): %s", len(rescued), reason)
        return rescued

    # -- cancellation ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Cancelled | None:
        """Cancel a queued or running job. Returns what it found, or None for an unknown job."""
        with write_transaction(self.engine) as conn:
            claims, now = self._lock(conn, jobs.c.job_id == job_id)
            claim = claims.get(job_id)
            if claim is None:
                return None
            change = None
            if may_move(claim.status, JobStatus.CANCELLED):
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
                change = JobChange(
                    job_id,
                    JobStatus.CANCELLED.value,
                    timestamp=now,
                    task_type=claim.task_type,
                    cause=Cause.CANCELLED,
                    priority=claim.priority,
                )
                notify(conn, self.origin, [change])
        return Cancelled(claim.status, claim.worker_id, claim.attempt, claim.lease_token, change)

    # -- operators' changes ----------------------------------------------------------------------

    def reprioritise(self, job_id: str, priority: int) -> Changed | None:
        """Set a queued job's priority (the claim order's first key); other states are left
        alone. None for an unknown job.

        A raised priority wakes the workers: one that went idle while the job waited behind
        others (or in a retry's backoff) looks once more; a lower priority cannot make a job
        claimable sooner, so it wakes nobody."""
        with write_transaction(self.engine) as conn:
            claims, now = self._lock(conn, jobs.c.job_id == job_id)
            claim = claims.get(job_id)
            if claim is None:
                return None
            queued = claim.status == JobStatus.QUEUED.value
            change = None
            if queued:
                conn.execute(
                    update(jobs).where(jobs.c.job_id == job_id).values(priority=priority, updated_at=now)
                )
                conn.execute(
                    update(queue_entries).where(queue_entries.c.job_id == job_id).values(priority=priority)
                )
                change = JobChange(
                    job_id,
                    claim.status,
                    timestamp=now,
                    task_type=claim.task_type,
                    cause=Cause.REPRIORITISED,
                    priority=priority,
                    wake_at=0 if priority > claim.priority else None,
                )
        return Changed(claim.status, claim.task_type, claim.priority, queued, change)

    def retry(self, job_id: str) -> Changed | None:
        """Queue a failed or cancelled job again, as the same job (Oban's retry): a new claim
        gets the next attempt number, `attempt_errors` keeps the history, and the job gets the
        task's retries afresh (`max_retries` counts from the attempts made). Other states are
        left alone. None for an unknown job.

        The old claim's lease token is cleared, so a worker still finishing a cancelled attempt
        can no longer report on the job.
        """
        with write_transaction(self.engine) as conn:
            claims, now = self._lock(conn, jobs.c.job_id == job_id)
            claim = claims.get(job_id)
            if claim is None:
                return None
            # A finished job that may be queued again (jobs.NEXT): failed or cancelled.
            retryable = claim.status in TERMINAL and may_move(claim.status, JobStatus.QUEUED)
            change = None
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
                        updated_at=now,
                    )
                )
                change = JobChange(
                    job_id,
                    JobStatus.QUEUED.value,
                    timestamp=now,
                    task_type=claim.task_type,
                    cause=Cause.RETRIED,
                    priority=claim.priority,
                    wake_at=0,
                )
                notify(conn, self.origin, [change])
        return Changed(claim.status, claim.task_type, claim.priority, retryable, change)
