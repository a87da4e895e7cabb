"""Priority aging: a queued job that waited long enough moves up one priority step.

The claim takes the most urgent job first (`priority DESC, created_at`), so under a steady
stream of urgent jobs a low-priority one would wait forever. Raising the priority of jobs that
have waited `step_ms` since they were queued or last raised (`updated_at`) by one step, up to
`MAX_PRIORITY`, lets every job reach the top within (MAX_PRIORITY - priority) steps; once there,
it was created before the stream behind it, so it runs first. The claim and its index stay as
they are: aging only rewrites `priority`, which the index already orders by.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select, update

from compute.db.session import write_transaction
from compute.db.tables import jobs_table as jobs
from compute.jobs import JobStatus

#: The highest priority a client may ask for; aging stops there.
MAX_PRIORITY = 10


def age_queued(engine: Engine, now_ms: int, step_ms: int, limit: int = 500) -> int:
    """Raise by one the priority of up to `limit` queued jobs untouched for `step_ms`.

    One short write transaction; returns how many jobs moved up (call again while it is `limit`).
    """
    due = (
        select(jobs.c.id)
        .where(
            jobs.c.status == JobStatus.QUEUED.value,
            jobs.c.priority < MAX_PRIORITY,
            func.coalesce(jobs.c.updated_at, jobs.c.created_at) <= now_ms - step_ms,
        )
        .limit(limit)
        .scalar_subquery()
    )
    statement = (
        update(jobs)
        .where(jobs.c.id.in_(due), jobs.c.status == JobStatus.QUEUED.value, jobs.c.priority < MAX_PRIORITY)
        .values(priority=jobs.c.priority + 1, updated_at=now_ms)
    )
    with write_transaction(engine) as conn:
        return int(conn.execute(statement).rowcount)
