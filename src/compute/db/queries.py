"""Reads for people: pages of jobs (GET /jobs) with filters and keyset pagination.

A page is one indexed SELECT: the filters, the caller's scope, `ORDER BY <sort keys>, id` and
`LIMIT n + 1` (the extra row says whether there is a next page). The next page starts after
the last row's sort keys, never at an offset, so rows inserted or deleted meanwhile neither
repeat nor skip a row: a new job has a higher `id` and a later `created_at`, so it lands before
the first page of a newest-first listing and at the end of an oldest-first one.

The cursor is opaque: a small JSON list `[version, sort, key...]` sealed with AES-GCM under a
key drawn once and kept in `server_preferences` (so every server process reads the others'
cursors), then base64url. Sealed rather than signed because the keys include the row's internal
`id`, which counts every job anyone created: a client must not read it. A cursor that does not
open (altered, another deployment's, made up) is a BadCursor (400). It grants nothing either
way: the scope and the filters are applied again to every page.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ColumnElement, Engine, Select, and_, null, or_, select, true

from compute.db.preferences import drawn_once
from compute.db.repository import JobRecord
from compute.db.tables import jobs_table as jobs
from compute.errors import ComputeError
from compute.jobs import JobStatus

CURSOR_VERSION = 2
#: Longest cursor accepted, characters: a real one is about 100.
MAX_CURSOR = 256
#: server_preferences key of the cursors' AES-256 key (hex).
CURSOR_KEY = "cursor_key"
_NONCE = 12
#: Bound into every seal, so nothing else sealed under the same key reads as a cursor.
_PURPOSE = b"compute job listing cursor"


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


#: The columns of a listing without the results.
_LIGHT = tuple(c for c in jobs.c if c.name != "task_output")


class BadCursor(ComputeError, ValueError):
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


class CursorSeal:
    """Seals and opens cursors with one AES-GCM key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encode(self, sort: JobSort, keys: Sequence[int]) -> str:
        raw = json.dumps([CURSOR_VERSION, sort.value, *keys], separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, raw, _PURPOSE)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def decode(self, cursor: str, sort: JobSort) -> list[int]:
        """The sort keys a cursor holds; BadCursor when it is not one of ours for `sort`."""
        if not cursor or len(cursor) > MAX_CURSOR:
            raise BadCursor(f"a cursor is 1-{MAX_CURSOR} characters")
        try:
            sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            raw = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _PURPOSE)
            value = json.loads(raw)
        except (binascii.Error, ValueError, InvalidTag):
            raise BadCursor("not a cursor this server made") from None
        if not isinstance(value, list) or len(value) < 2 or value[0] != CURSOR_VERSION:
            raise BadCursor("not a cursor this server made")
        if value[1] != sort.value:
            raise BadCursor(f"the cursor belongs to sort={value[1]!s:.20}, not sort={sort.value}")
        keys = value[2:]
        if len(keys) != len(_KEYS[sort]) or not all(_is_int64(k) for k in keys):
            raise BadCursor("not a cursor this server made")
        return keys


def cursor_seal(engine: Engine) -> CursorSeal:
    """The deployment's seal: its key drawn on first use and kept in the database."""
    return CursorSeal(bytes.fromhex(drawn_once(engine, CURSOR_KEY, lambda: os.urandom(32).hex())))


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
        self._seal: CursorSeal | None = None
        self._seal_lock = threading.Lock()

    @property
    def seal(self) -> CursorSeal:
        """The cursors' seal, its key read (or drawn) on first use. Blocking."""
        with self._seal_lock:
            if self._seal is None:
                self._seal = cursor_seal(self.engine)
            return self._seal

    def page(
        self,
        filters: JobFilter,
        *,
        everything: bool,
        owner: str | None = None,
        sort: JobSort = JobSort.NEWEST,
        limit: int = 50,
        cursor: str | None = None,
        with_output: bool = True,
    ) -> JobPage:
        """One page of the jobs the caller may see (all of them when `everything`, else those
        `owner` created); BadCursor for a cursor that is not ours."""
        after = None if cursor is None else self.seal.decode(cursor, sort)
        stmt = self.statement(
            filters,
            everything=everything,
            owner=owner,
            sort=sort,
            limit=limit,
            after=after,
            with_output=with_output,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = self.seal.encode(sort, [last[c.name] for c, _ in _KEYS[sort]])
        return JobPage([JobRecord.from_row(r) for r in rows], next_cursor)

    @staticmethod
    def statement(
        filters: JobFilter,
        *,
        everything: bool,
        owner: str | None,
        sort: JobSort,
        limit: int,
        after: Sequence[int] | None = None,
        with_output: bool = True,
    ) -> Select[Any]:
        """The SELECT of `page`: limit + 1 rows after the sort keys `after` (a cursor's), the
        extra one telling whether more follow; without `with_output`, `task_output` is not read
        (NULL in its place): a plugin's result may be large, and a listing shows many jobs."""
        where = _where(filters, everything, owner)
        if after is not None:
            where.append(_after(sort, after))
        order = [c.desc() if descending else c.asc() for c, descending in _KEYS[sort]]
        columns = list(jobs.c) if with_output else [*_LIGHT, null().label("task_output")]
        return select(*columns).where(and_(true(), *where)).order_by(*order).limit(limit + 1)

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
