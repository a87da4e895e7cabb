"""What the server may forget, found and deleted in small batches: old finished jobs, gone workers.

Every call is one short statement or transaction (a SELECT of at most `limit` ids, then one
DELETE guarded again by status or age), so on SQLite the single writer lock is held for one
batch at most and a worker's claim waits a few milliseconds, never for a whole cleanup.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, delete, func, select

from compute.db.session import write_transaction
from compute.db.tables import jobs_table as jobs
from compute.db.tables import queue_entries_table as queue_entries
from compute.db.tables import worker_sessions_table as sessions
from compute.jobs import TERMINAL

_TERMINAL = sorted(s.value for s in TERMINAL)
#: When a finished job finished (a job cancelled before it ran has no completed_at).
_finished_at = func.coalesce(jobs.c.completed_at, jobs.c.created_at)


def finished_before(engine: Engine, cutoff_ms: int, limit: int) -> list[str]:
    """Up to `limit` ids of jobs that reached a terminal state before `cutoff_ms`, oldest first."""
    stmt = (
        select(jobs.c.job_id)
        .where(jobs.c.status.in_(_TERMINAL), _finished_at < cutoff_ms)
        .order_by(_finished_at, jobs.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def finished_beyond(engine: Engine, keep: int, limit: int) -> list[str]:
    """Up to `limit` ids of finished jobs older than the newest `keep` finished ones."""
    stmt = (
        select(jobs.c.job_id)
        .where(jobs.c.status.in_(_TERMINAL))
        .order_by(_finished_at.desc(), jobs.c.id.desc())
        .offset(keep)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def delete_finished(engine: Engine, job_ids: Sequence[str]) -> list[str]:
    """Delete these jobs if they are still finished (a retry may have requeued one meanwhile).

    Returns the ids actually deleted: only their folders may go.
    """
    if not job_ids:
        return []
    with write_transaction(engine) as conn:
        deleted = list(
            conn.execute(
                delete(jobs)
                .where(jobs.c.job_id.in_(list(job_ids)), jobs.c.status.in_(_TERMINAL))
                .returning(jobs.c.job_id)
            ).scalars()
        )
        if deleted:
            conn.execute(delete(queue_entries).where(queue_entries.c.job_id.in_(deleted)))
    return deleted


def workers_gone_since(engine: Engine, cutoff_ms: int, limit: int) -> list[str]:
    """Worker ids none of whose sessions has been seen since `cutoff_ms` (a live session
    heartbeats `last_seen`; a stopped one set it when it stopped)."""
    stmt = (
        select(sessions.c.worker_id)
        .group_by(sessions.c.worker_id)
        .having(func.max(sessions.c.last_seen) < cutoff_ms)
        .order_by(sessions.c.worker_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def forget_sessions(engine: Engine, worker_ids: Sequence[str], cutoff_ms: int) -> int:
    """Delete these workers' sessions not seen since `cutoff_ms` (a run that started meanwhile
    under the same id keeps its row). Returns how many rows went."""
    if not worker_ids:
        return 0
    with write_transaction(engine) as conn:
        return int(
            conn.execute(
                delete(sessions).where(
                    sessions.c.worker_id.in_(list(worker_ids)), sessions.c.last_seen < cutoff_ms
                )
            ).rowcount
        )
