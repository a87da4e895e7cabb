"""Job changes told to every server of a deployment, by the database, in the write that made them.

With several servers on one PostgreSQL, a change one of them (or a worker writing its result
itself) commits must reach the others' live views. The bus will not do: anyone who may publish
on it could forge a change. So every job write on PostgreSQL also issues `NOTIFY` on `CHANNEL`
in its own transaction, with what changed (`notify`): only a client of the database can notify,
a notice is delivered only if the write commits, and in commit order. Each server listens
(server/live/notice_listener.py) and shows the changes whose `origin` is not its own (its own it shows
already). SQLite has no such channel: one server per SQLite database, as before.

A notice carries what the live views show (`JobChange.as_dict`), why it changed and, for a new
job, its owner; one `NOTIFY` holds as many changes as fit in PostgreSQL's 8,000 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from compute.errors import ComputeError
from compute.jobs import Cause, JobChange, now_ms

CHANNEL = "compute_job_changes"
#: PostgreSQL refuses a payload of 8,000 bytes or more.
MAX_PAYLOAD = 7800
#: Longest owner carried (a longer one is left out: the listener looks it up).
MAX_OWNER = 512


def notify(conn: Connection, origin: str, changes: Iterable[JobChange | None]) -> None:
    """Within the write transaction on `conn`: tell the other servers about `changes` (the ones
    clients see). Nothing on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    items = [_item(change) for change in changes if change is not None and change.shown]
    for payload in _payloads(origin, items):
        conn.execute(select(func.pg_notify(CHANNEL, payload)))


def _item(change: JobChange) -> list[Any]:
    owner = change.created_by if change.cause is Cause.SUBMITTED else None
    return [
        change.job_id,
        change.status,
        change.progress,
        change.timestamp or now_ms(),
        change.task_type,
        None if change.cause is None else change.cause.value,
        owner if owner is None or len(owner) <= MAX_OWNER else None,
    ]


def _payloads(origin: str, items: list[list[Any]]) -> Iterator[str]:
    head = json.dumps(origin)
    batch: list[str] = []
    size = len(head) + 16
    for item in items:
        encoded = json.dumps(item, separators=(",", ":"))
        if batch and size + len(encoded) + 1 > MAX_PAYLOAD:
            yield _payload(head, batch)
            batch, size = [], len(head) + 16
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield _payload(head, batch)


def _payload(head: str, batch: list[str]) -> str:
    return f'{{"o":{head},"c":[{",".join(batch)}]}}'


class BadNotice(ComputeError, ValueError):
    """A change notice that is not what `notify` sends."""


def parse(payload: str) -> tuple[str, list[JobChange]]:
    """(origin, changes) of a notice. Only database clients can notify, but a notice is checked
    as any input is: wrong shapes are BadNotice."""
    try:
        data = json.loads(payload)
        origin, items = data["o"], data["c"]
        if not isinstance(origin, str) or not isinstance(items, list):
            raise BadNotice("not a notice")
        return origin, [_change(item) for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadNotice(str(exc)[:200]) from None


def _change(item: Any) -> JobChange:
    job_id, status, progress, timestamp, task_type, cause, owner = item
    if not (
        isinstance(job_id, str)
        and isinstance(status, str)
        and isinstance(task_type, str)
        and type(progress) is int
        and type(timestamp) is int
        and (owner is None or isinstance(owner, str))
        and (cause is None or isinstance(cause, str))
    ):
        raise BadNotice("a change of the wrong shape")
    return JobChange(
        job_id,
        status,
        progress=progress,
        timestamp=timestamp,
        task_type=task_type,
        cause=None if cause is None else Cause(cause),
        created_by=owner,
    )
