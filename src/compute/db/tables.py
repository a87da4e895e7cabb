"""Tables `jobs` and `queue_entries`, with the CL Server column names.

Columns beyond CL Server's (priority, worker_id, updated_at and the claim's lease fields) are
additions only, so a
CL Server database stays readable.
"""

from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy import BigInteger, Float, Index, Integer, String, Table, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String, unique=True, nullable=False, index=True)
    task_type: Mapped[str] = mapped_column(String, nullable=False)
    #: JSON text, as in CL Server.
    params: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    #: Indexed with created_at (ix_jobs_status_created), like created_by, task_type, worker_id.
    status: Mapped[str] = mapped_column(String, nullable=False)
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: Milliseconds since the epoch.
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    task_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    created_by: Mapped[str | None] = mapped_column(String, nullable=True)
    # Additions to the CL Server schema:
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=5, server_default="5")
    worker_id: Mapped[str | None] = mapped_column(String, nullable=True)
    updated_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: The current claim: attempt number, its worker session, lease token and expiry (ms).
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    worker_session: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Highest event sequence number accepted for the current attempt.
    event_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    #: Execution limit in seconds (None: no limit).
    timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: A requeued job waits until then (ms) before it can be claimed again.
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: JSON list of {"attempt", "error", "at"}, one per failed attempt.
    attempt_errors: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The Idempotency-Key header scoped to its user (repository.idempotency_scope): a retried
    #: submit finds the job it created.
    idempotency_key: Mapped[str | None] = mapped_column(String, nullable=True, unique=True, index=True)

    __table_args__ = (
        # Serves the claim: the queued rows only, already in claim order.
        Index(
            "ix_jobs_claim_order",
            text("priority DESC"),
            "created_at",
            "id",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        # Serves the lease sweep and the rescue of a lost worker's jobs.
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            sqlite_where=text("status = 'processing'"),
            postgresql_where=text("status = 'processing'"),
        ),
        # Serve GET /jobs: each filter with the listing's order (created_at, then id), so a
        # page is an index range. The status and created_by ones replace single-column indexes.
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_owner_created", "created_by", "created_at", "id"),
        Index("ix_jobs_task_created", "task_type", "created_at", "id"),
        Index("ix_jobs_worker_created", "worker_id", "created_at", "id"),
    )


class QueueEntryRow(Base):
    """CL Server's priority record of a submitted job; written with the job, removed with it."""

    __tablename__ = "queue_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String, unique=True, nullable=False, index=True)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    enqueued_at: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)


class WorkerSessionRow(Base):
    """One run of a worker process, registered by the worker itself when it starts.

    The database is shared by server and workers and closed to the broker's other clients, so
    a session found here is a real worker; its `secret` keys the HMAC on the worker's
    presence messages, which the server checks before it believes them.
    """

    __tablename__ = "worker_sessions"

    session: Mapped[str] = mapped_column(String, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    secret: Mapped[str] = mapped_column(String, nullable=False)
    #: JSON list of task types.
    tasks: Mapped[str] = mapped_column(Text, nullable=False, default="[]", server_default="[]")
    hostname: Mapped[str | None] = mapped_column(String, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[str | None] = mapped_column(String, nullable=True)
    #: Milliseconds since the epoch.
    started_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_seen: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stopped_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class PreferenceRow(Base):
    """A setting an admin changes at run time (guest mode), kept across restarts."""

    __tablename__ = "server_preferences"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    #: JSON text.
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_by: Mapped[str | None] = mapped_column(String, nullable=True)


class ServerLeaseRow(Base):
    """A job that one server of a deployment does at a time (the periodic sweeps), and who
    holds it until when. Expiry is in the database's clock, never a server's: hosts' clocks may
    differ by seconds (db/leases.py)."""

    __tablename__ = "server_leases"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    #: The holder's COMPUTE_SERVER_ID.
    holder: Mapped[str] = mapped_column(String, nullable=False)
    #: Milliseconds since the epoch, by the database's clock.
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class RateBucketRow(Base):
    """A token bucket of the job creation limit (JOB_RATE_LIMIT), shared by every server of a
    deployment (db/rate_buckets.py): its tokens as of `at`, by the database's clock."""

    __tablename__ = "rate_buckets"

    #: `user:<id>` or `address:<client address>`.
    key: Mapped[str] = mapped_column(String, primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, nullable=False)
    #: Milliseconds since the epoch, by the database's clock.
    at: Mapped[int] = mapped_column(BigInteger, nullable=False)


jobs_table = cast(Table, JobRow.__table__)
queue_entries_table = cast(Table, QueueEntryRow.__table__)
preferences_table = cast(Table, PreferenceRow.__table__)
worker_sessions_table = cast(Table, WorkerSessionRow.__table__)
server_leases_table = cast(Table, ServerLeaseRow.__table__)
rate_buckets_table = cast(Table, RateBucketRow.__table__)


def dumps(value: Any) -> str | None:
    """A value for a JSON text column (`params`, `task_output`, `attempt_errors`); None stays NULL."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


def loads(text: str | None) -> Any:
    """The value a JSON text column holds; NULL is None."""
    return None if text is None else json.loads(text)
