"""Reads for people: pages of jobs (GET /jobs) with filters and keyset pagination.

A page is one indexed SELECT: the filters, the caller's scope, `ORDER BY <sort keys>, id` and
`LIMIT n + 1` (the extra row says whether there is a next page). The next page starts after
the last row's sort keys, never at an offset, so rows inserted or deleted meanwhile neither
repeat nor skip a row: a new job has a higher `id` and a later `created_at`, so it lands before
the first page of a newest-first listing and at the end of an oldest-first one.

The cursor is opaque to clients: base64url of a small JSON list `[version, sort, key...]`.
It is not signed, because it grants nothing: the scope and the filters are applied again to
every page, so a forged cursor only moves the start.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, or_, select, true

from compute.db.repository import JobRecord
from compute.db.tables import jobs_table as jobs
from compute.jobs import JobStatus

CURSOR_VERSION = 1
#: Longest cursor accepted, characters: a real one is about 60.
MAX_CURSOR = 256


class JobSort(StrEnum):
    """Orders of a job listing; `id` breaks ties, so the order is total."""

    NEWEST = "-created_at"
    OLDEST = "created_at"
    #: Most urgent first, then oldest: the order workers claim in.
    URGENT = "-priority"
    LEAST_URGENT = "priority"


#: Per sort: (column, descending) in order; `id` is always last.
_KEYS: dict[JobSort, tuple[tuple[Any, bool], ...]] = {
    JobSort.NEWEST: ((jobs.c.created_at, True), (jobs.c.id, True)),
    JobSort.OLDEST: ((jobs.c.created_at, False), (jobs.c.id, False)),
    JobSort.URGENT: ((jobs.c.priority, True), (jobs.c.created_at, False), (jobs.c.id, False)),
    JobSort.LEAST_URGENT: ((jobs.c.priority, False), (jobs.c.created_at, False), (jobs.c.id, False)),
}


class BadCursor(ValueError):
    """The cursor was not made by this server for this sort order."""


@dataclass(frozen=True)
class JobFilter:
    """What a listing shows. Empty tuples and None mean "any"."""

    statuses: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    #: Only jobs created by this user (None: any user).
    created_by: str | None = None
    worker_id: str | None = None
    #: Milliseconds since the epoch: created_at >= created_after and < created_before.
    created_after: int | None = None
    created_before: int | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobRecord]
    #: Where the next page starts; None on the last page.
    next_cursor: str | None


def encode_cursor(sort: JobSort, keys: Sequence[int]) -> str:
    raw = json.dumps([CURSOR_VERSION, sort.value, *keys], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, sort: JobSort) -> list[int]:
    """The sort keys a cursor holds; BadCursor when it is not one of ours for `sort`."""
    if not cursor or len(cursor) > MAX_CURSOR:
        raise BadCursor(f"a cursor is 1-{MAX_CURSOR} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise BadCursor("not a cursor this server made") from None
    if not isinstance(value, list) or len(value) < 2 or value[0] != CURSOR_VERSION:
        raise BadCursor("not a cursor this server made")
    if value[1] != sort.value:
        raise BadCursor(f"the cursor belongs to sort={value[1]!s:.20}, not sort={sort.value}")
    keys = value[2:]
    if len(keys) != len(_KEYS[sort]) or not all(_is_int64(k) for k in keys):
        raise BadCursor("not a cursor this server made")
    return keys


def _is_int64(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def _after(sort: JobSort, keys: Sequence[int]) -> ColumnElement[bool]:
    """Rows strictly after `keys` in `sort` order: (k1 > v1) OR (k1 = v1 AND k2 > v2) OR ...

    Spelt out rather than as a row-value comparison so mixed directions work on both dialects.
    """
    columns = _KEYS[sort]
    branches = []
    for i, (column, descending) in enumerate(columns):
        equal = [c == v for (c, _), v in zip(columns[:i], keys[:i], strict=True)]
        beyond = column < keys[i] if descending else column > keys[i]
        branches.append(and_(*equal, beyond))
    return or_(*branches)


def _where(filters: JobFilter, everything: bool, owner: str | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if not everything:  # the caller's own jobs; a guest's (owner None) are those without a user
        where.append(jobs.c.created_by.is_(None) if owner is None else jobs.c.created_by == owner)
    if filters.created_by is not None:
        where.append(jobs.c.created_by == filters.created_by)
    if filters.statuses:
        where.append(jobs.c.status.in_(filters.statuses))
    if filters.task_types:
        where.append(jobs.c.task_type.in_(filters.task_types))
    if filters.worker_id is not None:
        where.append(jobs.c.worker_id == filters.worker_id)
    if filters.created_after is not None:
        where.append(jobs.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        where.append(jobs.c.created_at < filters.created_before)
    return where


class JobQueries:
    """Listing reads over `engine`. Blocking: the routes call them through RouteDatabase."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def page(
        self,
        filters: JobFilter,
        *,
        everything: bool,
        owner: str | None = None,
        sort: JobSort = JobSort.NEWEST,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of the jobs the caller may see (all of them when `everything`, else those
        `owner` created); BadCursor for a cursor that is not ours."""
        stmt = self.statement(
            filters, everything=everything, owner=owner, sort=sort, limit=limit, cursor=cursor
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = encode_cursor(sort, [last[c.name] for c, _ in _KEYS[sort]])
        return JobPage([JobRecord.from_row(r) for r in rows], next_cursor)

    @staticmethod
    def statement(
        filters: JobFilter,
        *,
        everything: bool,
        owner: str | None,
        sort: JobSort,
        limit: int,
        cursor: str | None,
    ) -> Select[Any]:
        """The SELECT of `page`: limit + 1 rows, the extra one telling whether more follow."""
        where = _where(filters, everything, owner)
        if cursor is not None:
            where.append(_after(sort, decode_cursor(cursor, sort)))
        order = [c.desc() if descending else c.asc() for c, descending in _KEYS[sort]]
        return select(jobs).where(and_(true(), *where)).order_by(*order).limit(limit + 1)

    def running_on(self, sessions: Sequence[str]) -> dict[str, list[tuple[str, str | None]]]:
        """Running jobs per worker session: [(job_id, created_by)], for GET /workers."""
        if not sessions:
            return {}
        stmt = (
            select(jobs.c.worker_session, jobs.c.job_id, jobs.c.created_by)
            .where(jobs.c.status == JobStatus.PROCESSING.value, jobs.c.worker_session.in_(list(sessions)))
            .order_by(jobs.c.started_at)
        )
        found: dict[str, list[tuple[str, str | None]]] = {}
        with self.engine.connect() as conn:
            for session, job_id, created_by in conn.execute(stmt):
                found.setdefault(session, []).append((job_id, created_by))
        return found
