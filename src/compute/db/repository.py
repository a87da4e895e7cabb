"""Jobs in SQL up to the claim: the insert (with its Idempotency-Key), the claim itself, lease
renewal, reads and cleanup. Implements cl_ml_tools' JobRepository protocol.

What a request asks for (creator, priority, timeout, Idempotency-Key) comes in as arguments; an
insert returns what it changed (`JobChange`), for the server to announce.

The `db` package builds all the SQL, nothing outside it does; each of its modules holds the
statements of its own subject: every change after the claim (worker events, rescue,
cancellation, operators' changes) is in transitions.py, the listings for people in queries.py,
paused task types in paused.py, priority aging in aging.py, retention and forgetting in
cleanup.py, worker sessions in worker_sessions.py and preferences in preferences.py.

Calls are short and synchronous. The server's HTTP routes make them on a thread of their own
(server/dbcalls.py), so a stalled database never stalls the event loop.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cl_ml_tools import Job
from sqlalchemy import (
    BigInteger,
    Engine,
    String,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from compute.db.leases import database_now_ms
from compute.db.notices import notify
from compute.db.paused import unpaused
from compute.db.session import write_transaction
from compute.db.tables import dumps, loads
from compute.db.tables import jobs_table as jobs
from compute.db.tables import queue_entries_table as queue_entries
from compute.jobs import OPEN, TERMINAL, Cause, JobChange, JobStatus, now_ms
from compute.policies import Policies, TaskPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRecord:
    """One row of `jobs`, decoded."""

    job_id: str
    task_type: str
    params: dict[str, Any]
    status: str
    progress: int
    priority: int
    created_at: int
    started_at: int | None
    completed_at: int | None
    updated_at: int | None
    task_output: dict[str, Any] | None
    error_message: str | None
    retry_count: int
    max_retries: int
    created_by: str | None
    worker_id: str | None
    attempt: int = 0
    lease_token: str | None = None
    lease_expires_at: int | None = None
    worker_session: str | None = None
    timeout_seconds: float | None = None
    attempt_errors: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> JobRecord:
        return cls(
            job_id=row["job_id"],
            task_type=row["task_type"],
            params=loads(row["params"]) or {},
            status=row["status"],
            progress=row["progress"],
            priority=row["priority"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            updated_at=row["updated_at"],
            task_output=loads(row["task_output"]),
            error_message=row["error_message"],
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            created_by=row["created_by"],
            worker_id=row["worker_id"],
            attempt=row.get("attempt") or 0,
            lease_token=row.get("lease_token"),
            lease_expires_at=row.get("lease_expires_at"),
            worker_session=row.get("worker_session"),
            timeout_seconds=row.get("timeout_seconds"),
            attempt_errors=tuple(loads(row.get("attempt_errors")) or ()),
        )

    def to_job(self) -> Job:
        """The cl_ml_tools view of this job, as plugins receive it."""
        return Job(
            job_id=self.job_id,
            task_type=self.task_type,
            params=self.params,
            status=self.status,
            progress=self.progress,
            task_output=self.task_output,
            error_message=self.error_message,
        )


@dataclass(frozen=True)
class QueueSummary:
    task_type: str
    queued: int
    running: int
    oldest_queued_at: int | None


def idempotency_scope(created_by: str | None, key: str) -> str:
    """The stored form of a client's Idempotency-Key: one user's key never finds another's job.

    `u<length of the user id>:<user id>:<key>`, or `g:<key>` for a guest: the length says where
    the user id ends, so no two (user, key) pairs share a stored form, whatever characters
    either holds (`<user>:<key>` gave user `alice:x` with key `y` the job of `alice` with key
    `x:y`, and a user named `-` the guests' jobs).
    """
    if created_by is None:
        return f"g:{key}"
    return f"u{len(created_by)}:{created_by}:{key}"


class JobRepository:
    """Jobs in SQL. Storing only: the server's JobSubmitter tells the workers about new jobs."""

    def __init__(self, engine: Engine, policies: Policies | None = None, *, origin: str = "") -> None:
        """`origin`: who writes (the server's COMPUTE_SERVER_ID), named in the changes told to
        the deployment's other servers (db/notices.py)."""
        self.engine = engine
        self.origin = origin
        self.policies = policies or Policies(TaskPolicy())
        #: Number of task types -> the compiled claim statement (see _claim_sql).
        self._claim_cache: dict[int, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    # -- cl_ml_tools JobRepository protocol ---------------------------------------------

    def add_job(self, job: Job, created_by: str | None = None, priority: int | None = None) -> str:
        """Commit a new queued job; returns its id (see `insert_job`)."""
        return self.insert_job(job, created_by, priority)[0].job_id

    def new_row(
        self,
        job: Job,
        created_by: str | None = None,
        priority: int | None = None,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """The `jobs` row a new queued job gets. `timeout`: the client's execution limit
        (seconds; None: the task's policy); `idempotency_key`: the client's key, as sent."""
        now = now_ms()
        policy = self.policies.for_task(job.task_type)
        scoped_key = None if idempotency_key is None else idempotency_scope(created_by, idempotency_key)
        return {
            "job_id": job.job_id,
            "task_type": job.task_type,
            "params": dumps(job.params) or "{}",
            "status": JobStatus.QUEUED.value,
            "progress": 0,
            "created_at": now,
            "updated_at": now,
            "priority": 5 if priority is None else priority,
            "created_by": created_by,
            "retry_count": 0,
            "max_retries": policy.max_retries,
            "attempt": 0,
            "event_seq": 0,
            "timeout_seconds": timeout if timeout is not None else (policy.timeout or None),
            "idempotency_key": scoped_key,
        }

    def insert_job(
        self,
        job: Job,
        created_by: str | None = None,
        priority: int | None = None,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JobRecord, JobChange | None]:
        """Commit a new queued job; returns it, and what changed (None: nothing was stored).

        With an `idempotency_key`, a second job for the same user and key is not created: the
        job the key already names is returned instead, with None (the caller compares its id
        with `job.job_id` and drops what it prepared for the new one).
        """
        row = self.new_row(job, created_by, priority, timeout=timeout, idempotency_key=idempotency_key)
        try:
            [change] = self.insert_rows([row])
        except IntegrityError:
            key = row["idempotency_key"]
            existing = None if key is None else self.find_by_idempotency_key(key)
            if existing is None:
                raise
            return existing, None  # a retry that raced the first request: the first one's job
        return JobRecord.from_row(_with_defaults(row)), change

    def insert_rows(self, rows: Sequence[dict[str, Any]]) -> list[JobChange]:
        """Commit new queued jobs (`new_row`s) in one transaction, all or none; one change each.

        Under a burst of submissions the server stores what arrived together this way: one
        write lock and one commit for the lot instead of one each (server/flow/submit.py).
        """
        changes = [
            JobChange(
                r["job_id"],
                JobStatus.QUEUED.value,
                timestamp=r["created_at"],
                task_type=r["task_type"],
                cause=Cause.SUBMITTED,
                priority=r["priority"],
                wake_at=0,
                created_by=r["created_by"],
            )
            for r in rows
        ]
        with write_transaction(self.engine) as conn:
            conn.execute(insert(jobs), list(rows))
            conn.execute(
                insert(queue_entries),
                [
                    {"job_id": r["job_id"], "priority": r["priority"], "enqueued_at": r["created_at"]}
                    for r in rows
                ],
            )
            notify(conn, self.origin, changes)
        return changes

    def get_job(self, job_id: str) -> Job | None:
        record = self.get(job_id)
        return None if record is None else record.to_job()

    def update_job(self, job_id: str, **fields: Any) -> bool:
        allowed = {
            "status",
            "progress",
            "task_output",
            "error_message",
            "started_at",
            "completed_at",
            "priority",
            "worker_id",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update job fields: {sorted(unknown)}")
        if fields.get("status") == "error":  # cl_ml_tools' name for a failed job
            fields["status"] = JobStatus.FAILED.value
        if "task_output" in fields:
            fields["task_output"] = dumps(fields["task_output"])
        fields["updated_at"] = now_ms()
        with write_transaction(self.engine) as conn:
            result = conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**fields))
        return bool(result.rowcount > 0)

    def fetch_next_job(self, task_types: list[str]) -> Job | None:
        record = self.claim_next(task_types, worker_id="cl_ml_tools", lease_ms=3_600_000)
        return None if record is None else record.to_job()

    def delete_job(self, job_id: str) -> bool:
        with write_transaction(self.engine) as conn:
            conn.execute(delete(queue_entries).where(queue_entries.c.job_id == job_id))
            result = conn.execute(delete(jobs).where(jobs.c.job_id == job_id))
        return bool(result.rowcount > 0)

    # -- claims and leases -------------------------------------------------------------------

    def claim_next(
        self, task_types: Sequence[str], worker_id: str, session: str = "", lease_ms: int = 60_000
    ) -> JobRecord | None:
        """Atomically move the most urgent ready job of these types to `processing` (a claim of
        at most one job: `claim_batch`)."""
        claimed = self.claim_batch(task_types, worker_id, session, lease_ms, limit=1)
        return claimed[0] if claimed else None

    def claim_batch(
        self,
        task_types: Sequence[str],
        worker_id: str,
        session: str = "",
        lease_ms: int = 60_000,
        limit: int = 1,
    ) -> list[JobRecord]:
        """Atomically move up to `limit` of the most urgent ready jobs of these types to
        `processing`; in claim order (most urgent first).

        One statement: UPDATE ... WHERE id IN (SELECT ... LIMIT n [FOR UPDATE SKIP LOCKED])
        RETURNING *. SQLite serialises it under BEGIN IMMEDIATE; PostgreSQL skips rows
        another worker has locked, so two workers never get the same job. Each claim gets a new
        attempt number and its own lease token (the key of the worker's event signatures): a
        random 128-bit part drawn for the statement and the row's id, so no two claims share
        one, and only the claimant knows any of them.
        """
        if not task_types or limit < 1:
            return []
        with write_transaction(self.engine) as conn:
            # Paused task types (db/paused.py), read in the claim's own transaction: on SQLite it
            # holds the write lock from BEGIN, so no pause commits between this read and the claim.
            ready = unpaused(conn, task_types)
            if not ready:
                return []
            sql, args = self._claim_args(ready, worker_id, session, lease_ms, limit)
            rows = conn.exec_driver_sql(sql, args).mappings().all()
        # RETURNING gives no order: put them back in the claim order.
        return sorted((JobRecord.from_row(r) for r in rows), key=_claim_order)

    def _claim_args(
        self, task_types: Sequence[str], worker_id: str, session: str, lease_ms: int, limit: int
    ) -> tuple[str, Any]:
        """The claim's SQL and its parameters, in the form this database's driver takes them."""
        sql, positions, fixed = self._claim_sql(len(task_types))
        params: dict[str, Any] = {
            **fixed,
            "worker_id": worker_id,
            "session": session,
            "lease_ms": lease_ms,
            "token": secrets.token_hex(16) + ".",
            "limit": limit,
            **{f"type_{i}": t for i, t in enumerate(task_types)},
        }
        return sql, tuple(params[k] for k in positions) if positions else params

    def _claim_sql(self, types: int) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        """The claim statement for `types` task types, compiled once for this database: building
        and caching it through SQLAlchemy on every claim cost about as much CPU as the statement
        itself (the worker's hottest path). Returns the SQL, for positional drivers (SQLite) the
        order of its parameters, and the values SQLAlchemy bound itself."""
        found = self._claim_cache.get(types)
        if found is not None:
            return found
        names = [f"type_{i}" for i in range(types)]
        # Every time the claim writes or compares is the database's (see database_now_ms): the
        # worker's own clock may be seconds off the server's, whose sweep judges the lease.
        now = database_now_ms(self.engine.dialect.name)
        if self.engine.dialect.name == "sqlite":
            # SQLite runs an IN (subquery) once, into a temporary table.
            chosen = jobs.c.id.in_(_sqlite_candidate(names, now))
        else:
            # PostgreSQL may run an IN (subquery) again for each row it joins it with, each run
            # locking (SKIP LOCKED) and returning other rows; a CTE with FOR UPDATE is never
            # inlined, so it runs once: UPDATE ... FROM claimable WHERE jobs.id = claimable.id.
            chosen = jobs.c.id == _candidate(names, now).cte("claimable").c.id
        statement = (
            update(jobs)
            .where(chosen, jobs.c.status == literal_column(f"'{JobStatus.QUEUED.value}'"))
            .values(
                status=literal_column(f"'{JobStatus.PROCESSING.value}'"),
                started_at=now,
                updated_at=now,
                worker_id=bindparam("worker_id"),
                worker_session=bindparam("session"),
                attempt=jobs.c.attempt + literal_column("1"),
                retry_count=jobs.c.attempt,
                lease_token=bindparam("token", type_=String()) + cast(jobs.c.id, String()),
                lease_expires_at=now + bindparam("lease_ms", type_=BigInteger()),
                event_seq=literal_column("0"),
                next_attempt_at=literal_column("NULL"),
            )
            .returning(*jobs.c)
        )
        compiled = statement.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})
        positions = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        fixed = {k: v for k, v in compiled.params.items() if v is not None}
        self._claim_cache[types] = (compiled.string, positions, fixed)
        return compiled.string, positions, fixed

    def extend_leases(self, leases: Sequence[tuple[str, str]], lease_ms: int) -> int:
        """Push the expiry of these (job_id, lease_token) claims; returns how many still hold."""
        return len(leases) - len(self.renew_leases(leases, lease_ms))

    def renew_leases(self, leases: Sequence[tuple[str, str]], lease_ms: int) -> set[str]:
        """Push the expiry of these (job_id, lease_token) claims in one statement, to `lease_ms`
        from now by the database's clock; returns the job ids whose claim is gone (rescued,
        cancelled, finished). Nothing to renew: no statement."""
        if not leases:
            return set()
        expires = database_now_ms(self.engine.dialect.name) + lease_ms
        claims = [(jobs.c.job_id == job_id) & (jobs.c.lease_token == token) for job_id, token in leases]
        statement = (
            update(jobs)
            .where(jobs.c.status == JobStatus.PROCESSING.value, or_(*claims))
            .values(lease_expires_at=expires)
            .returning(jobs.c.job_id)
        )
        with write_transaction(self.engine) as conn:
            held = set(conn.execute(statement).scalars())
        return {job_id for job_id, _ in leases} - held

    # -- reads ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
        return None if row is None else JobRecord.from_row(row)

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        """The job stored with this key (`idempotency_scope(user, header)`), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).mappings().first()
        return None if row is None else JobRecord.from_row(row)

    def existing_job_ids(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these ids have a row (the orphan sweep keeps their folders)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(job_ids), 500):  # bounded IN lists
                chunk = list(job_ids[start : start + 500])
                found.update(conn.execute(select(jobs.c.job_id).where(jobs.c.job_id.in_(chunk))).scalars())
        return found

    def attempts(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """(status, attempt) of each of these jobs that has a row (the staging sweep's read)."""
        found: dict[str, tuple[str, int]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(job_ids), 500):  # bounded IN lists
                chunk = list(job_ids[start : start + 500])
                stmt = select(jobs.c.job_id, jobs.c.status, jobs.c.attempt).where(jobs.c.job_id.in_(chunk))
                found.update({r.job_id: (r.status, r.attempt) for r in conn.execute(stmt)})
        return found

    def queue_summary(self) -> list[QueueSummary]:
        """Queued and running counts per task type, with the oldest waiting job's age."""
        stmt = (
            select(
                jobs.c.task_type,
                jobs.c.status,
                func.count().label("n"),
                func.min(jobs.c.created_at).label("oldest"),
            )
            .where(jobs.c.status.in_(OPEN))
            .group_by(jobs.c.task_type, jobs.c.status)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        summary: dict[str, dict[str, Any]] = {}
        for task_type, status, n, oldest in rows:
            entry = summary.setdefault(task_type, {"queued": 0, "running": 0, "oldest": None})
            if status == JobStatus.QUEUED.value:
                entry["queued"], entry["oldest"] = n, oldest
            else:
                entry["running"] = n
        return [QueueSummary(t, e["queued"], e["running"], e["oldest"]) for t, e in summary.items()]

    def finished_before(self, cutoff_ms: int) -> list[str]:
        """Ids of jobs that reached a terminal state before `cutoff_ms`."""
        stmt = select(jobs.c.job_id).where(
            jobs.c.status.in_([s.value for s in TERMINAL]),
            func.coalesce(jobs.c.completed_at, jobs.c.created_at) < cutoff_ms,
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def delete_many(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        with write_transaction(self.engine) as conn:
            conn.execute(delete(queue_entries).where(queue_entries.c.job_id.in_(job_ids)))
            return int(conn.execute(delete(jobs).where(jobs.c.job_id.in_(job_ids))).rowcount)


# The claim's candidate: the most urgent ready job of the worker's types. The partial index
# ix_jobs_claim_order holds only queued rows, in claim order, so the claim reads one entry however
# large the table or the backlog. A database uses a partial index only when the query names its
# predicate literally (a bound parameter does not match it): hence status = 'queued' as a literal.
# SQLite's planner, without statistics, still prefers the status index and sorts every queued row
# (~170 ms per claim with 100,000 queued, compute-bench --sections claim_scale), and SQLAlchemy
# renders no index hint for SQLite: so its candidate is this text, with INDEXED BY.
def _sqlite_candidate(type_params: Sequence[str], now: ColumnElement[int]) -> Any:
    return text(
        "SELECT id FROM jobs INDEXED BY ix_jobs_claim_order"
        f" WHERE status = '{JobStatus.QUEUED.value}'"
        f" AND task_type IN ({', '.join(':' + n for n in type_params)})"
        f" AND (next_attempt_at IS NULL OR next_attempt_at <= {now})"
        " ORDER BY priority DESC, created_at, id LIMIT :limit"
    ).columns(jobs.c.id)


def _candidate(type_params: Sequence[str], now: ColumnElement[int]) -> Any:
    """The same candidate elsewhere (PostgreSQL): FOR UPDATE SKIP LOCKED skips rows another
    worker's claim holds."""
    return (
        select(jobs.c.id)
        .where(
            jobs.c.status == literal_column(f"'{JobStatus.QUEUED.value}'"),
            jobs.c.task_type.in_([bindparam(n) for n in type_params]),
            or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
        .limit(bindparam("limit", type_=BigInteger()))
        .with_for_update(skip_locked=True)
    )


def _claim_order(job: JobRecord) -> tuple[int, int, str]:
    return (-job.priority, job.created_at, job.job_id)


def _with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "started_at": None,
        "completed_at": None,
        "task_output": None,
        "error_message": None,
        "worker_id": None,
        **values,
    }
