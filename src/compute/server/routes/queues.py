"""GET /queues: per task type, how many jobs wait and run (the dashboard's queue view)."""

from __future__ import annotations

from fastapi import APIRouter

from compute.db.repository import QueueSummary
from compute.jobs import now_ms
from compute.server.http.auth import JobUser
from compute.server.http.deps import DbDep, RepoDep
from compute.server.http.schemas import QueueDepth

router = APIRouter(tags=["workers"])


@router.get("/queues", response_model=list[QueueDepth])
async def queues(repo: RepoDep, db: DbDep, _user: JobUser) -> list[QueueDepth]:
    """Queued and running jobs per task type, everyone's (counts only, as the retained
    `<root>/queues/<task>` topics publish them), with the oldest queued job's age."""
    summary: list[QueueSummary] = await db.call(repo.queue_summary)
    now = now_ms()
    return [
        QueueDepth(
            task_type=s.task_type,
            queued=s.queued,
            running=s.running,
            oldest_queued_age_ms=None if s.oldest_queued_at is None else max(0, now - s.oldest_queued_at),
        )
        for s in sorted(summary, key=lambda s: s.task_type)
    ]
