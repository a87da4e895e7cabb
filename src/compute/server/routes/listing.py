"""GET /jobs (filtered pages of the caller's jobs) and GET /workers (the runs the database vouches for)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import StringConstraints

from compute.db.queries import BadCursor, JobFilter, JobSort
from compute.db.worker_sessions import WorkerSession
from compute.jobs import JobStatus
from compute.server.http.auth import CallerScope
from compute.server.http.deps import DbDep, QueriesDep, RegistryDep, SessionsDep
from compute.server.http.schemas import JobList, JobListItem, WorkerList, WorkerPublic
from compute.topics import WorkerInfo

router = APIRouter(tags=["jobs"])
workers_router = APIRouter(tags=["workers"])

#: Largest page a client may ask for.
MAX_LIMIT = 200
#: Most values one filter may list (status=a&status=b...).
MAX_VALUES = 20
#: Latest time a filter may name (ms): beyond it no job can have been created; keeps SQL in range.
MAX_MS = 2**53
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Extra(StrEnum):
    """What a listing leaves out unless asked for."""

    TASK_OUTPUT = "task_output"


@router.get("/jobs", response_model=JobList, response_model_exclude_unset=True)
async def list_jobs(
    db: DbDep,
    queries: QueriesDep,
    scope: CallerScope,
    status: Annotated[
        list[JobStatus] | None,
        Query(
            max_length=MAX_VALUES,
            description="only jobs in these stored states (repeat for several); "
            "`failed` excludes cancelled jobs, which read `failed` with `cancelled: true`",
        ),
    ] = None,
    task_type: Annotated[list[Name] | None, Query(max_length=MAX_VALUES)] = None,
    created_by: Annotated[
        Name | None, Query(description="a user id (non-admins see only their own jobs whatever this says)")
    ] = None,
    worker_id: Annotated[Name | None, Query(description="jobs last claimed by this worker")] = None,
    created_after: Annotated[
        int | None, Query(ge=0, le=MAX_MS, description="ms since the epoch, inclusive")
    ] = None,
    created_before: Annotated[
        int | None, Query(ge=0, le=MAX_MS, description="ms since the epoch, exclusive")
    ] = None,
    sort: Annotated[
        JobSort,
        Query(
            description="`-created_at` newest first, `created_at` oldest "
            "first, `-priority` most urgent first (claim order), `priority` "
            "least urgent first"
        ),
    ] = JobSort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    include: Annotated[
        list[Extra] | None,
        Query(description="`task_output`: each job's result too (left out by default: results may be large)"),
    ] = None,
) -> JobList:
    """The caller's jobs (every job for admins and with auth off), a page at a time.

    Pages follow `next_cursor` and stay consistent while jobs are added: a row is never repeated
    or skipped because of an insert.
    """
    with_output = Extra.TASK_OUTPUT in (include or ())
    filters = JobFilter(
        statuses=tuple(s.value for s in status or ()),
        task_types=tuple(task_type or ()),
        created_by=created_by,
        worker_id=worker_id,
        created_after=created_after,
        created_before=created_before,
    )
    try:
        page = await db.call(
            queries.page,
            filters,
            everything=scope.everything,
            owner=scope.owner,
            sort=sort,
            limit=limit,
            cursor=cursor,
            with_output=with_output,
        )
    except BadCursor as exc:
        raise HTTPException(400, f"bad cursor: {exc}") from None
    return JobList(
        jobs=[JobListItem.listed(job, with_output) for job in page.jobs], next_cursor=page.next_cursor
    )


@workers_router.get("/workers", response_model=WorkerList)
async def list_workers(
    registry: RegistryDep, sessions: SessionsDep, queries: QueriesDep, db: DbDep, scope: CallerScope
) -> WorkerList:
    """Live workers: each run whose announcement verified and whose session the database still
    holds as running and heartbeating, with the jobs it runs now (those the caller may see)."""
    announced = dict(registry.workers)  # a snapshot on the loop, where the registry changes

    def read() -> tuple[dict[str, WorkerSession], dict[str, list[tuple[str, str | None]]]]:
        rows = sessions.get_many([info["session"] for info in announced.values()])
        return rows, queries.running_on(list(rows))

    rows, running = await db.call(read)
    workers = []
    for worker_id, info in sorted(announced.items()):
        row = rows.get(info["session"])
        if row is None or row.stopped_at is not None or row.silent_ms > registry.stale_after_ms:
            continue  # the database no longer vouches for it; the registry drops it soon
        jobs = [job_id for job_id, owner in running.get(row.session, []) if scope.allows(owner)]
        workers.append(_public(worker_id, info, row, jobs))
    return WorkerList(workers=workers)


def _public(worker_id: str, info: WorkerInfo, row: WorkerSession, jobs: list[str]) -> WorkerPublic:
    return WorkerPublic(
        worker_id=worker_id,
        session=row.session,
        state="idle" if info["idle"] else "busy",
        tasks=list(info["tasks"]),
        running_jobs=jobs,
        hostname=row.hostname,
        pid=row.pid,
        version=row.version,
        started_at=row.started_at,
        last_heartbeat=row.last_seen,
        last_announced=info["timestamp"],
    )
