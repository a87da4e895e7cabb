"""Bus identities the database vouches for: worker sessions, and the server's client-id suffix.

A worker registers each run (`worker_sessions`: session id, random secret, tasks, host, pid,
version) before it says anything on the bus, refreshes `last_seen` on its heartbeat and sets
`stopped_at` when it stops cleanly. The broker's other clients cannot read the database, so the
server believes an `info` message only when it verifies with the secret found here.

Every time here is the database's: the worker writes `last_seen` by it and the server reads how
long a session has been silent (`silent_ms`) by it, so neither host's clock is compared with the
other's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select, insert, select, update

from compute.db.leases import database_now_ms
from compute.db.preferences import drawn_once
from compute.db.session import write_transaction
from compute.db.tables import worker_sessions_table as sessions

#: server_preferences key of the random part of the server's persistent MQTT client id.
CLIENT_SUFFIX_KEY = "mqtt_client_suffix"


@dataclass(frozen=True)
class WorkerSession:
    session: str
    worker_id: str
    secret: str
    tasks: tuple[str, ...]
    hostname: str | None
    pid: int | None
    version: str | None
    started_at: int
    last_seen: int
    stopped_at: int | None
    #: How long since `last_seen` when the row was read, by the database's clock (ms).
    silent_ms: int = 0

    @classmethod
    def from_row(cls, row: Any) -> WorkerSession:
        tasks = json.loads(row["tasks"] or "[]")
        return cls(
            session=row["session"],
            worker_id=row["worker_id"],
            secret=row["secret"],
            tasks=tuple(t for t in tasks if isinstance(t, str)),
            hostname=row["hostname"],
            pid=row["pid"],
            version=row["version"],
            started_at=row["started_at"],
            last_seen=row["last_seen"],
            stopped_at=row["stopped_at"],
            silent_ms=row.get(SILENT, 0) or 0,
        )


#: The label of a read row's `silent_ms`.
SILENT = "silent_ms"


def new_secret() -> str:
    return secrets.token_hex(16)


class WorkerSessions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- the worker's side -------------------------------------------------------------------

    def register(
        self,
        session: str,
        worker_id: str,
        secret: str,
        tasks: list[str],
        hostname: str,
        pid: int,
        version: str,
    ) -> None:
        now = database_now_ms(self.dialect)
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(sessions).values(
                    session=session,
                    worker_id=worker_id,
                    secret=secret,
                    tasks=json.dumps(tasks),
                    hostname=hostname,
                    pid=pid,
                    version=version,
                    started_at=now,
                    last_seen=now,
                )
            )

    def touch(self, session: str) -> bool:
        """Heartbeat: this session is still alive. False if it is unknown or stopped."""
        with write_transaction(self.engine) as conn:
            return bool(
                conn.execute(
                    update(sessions)
                    .where(sessions.c.session == session, sessions.c.stopped_at.is_(None))
                    .values(last_seen=database_now_ms(self.dialect))
                ).rowcount
            )

    def stop(self, session: str) -> None:
        now = database_now_ms(self.dialect)
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(sessions).where(sessions.c.session == session).values(stopped_at=now, last_seen=now)
            )

    # -- the server's side -------------------------------------------------------------------

    def _read(self) -> Select[Any]:
        silent = (database_now_ms(self.dialect) - sessions.c.last_seen).label(SILENT)
        return select(sessions, silent)

    def get(self, session: str) -> WorkerSession | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._read().where(sessions.c.session == session)).mappings().first()
        return None if row is None else WorkerSession.from_row(row)

    def get_many(self, session_ids: list[str]) -> dict[str, WorkerSession]:
        if not session_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(self._read().where(sessions.c.session.in_(session_ids))).mappings()
            return {r["session"]: WorkerSession.from_row(r) for r in rows}


def server_client_suffix(engine: Engine) -> str:
    """The random part of the server's MQTT client id: drawn once, then kept in the database.

    Fixed across restarts (the broker keeps the server's persistent session under it), yet not
    guessable from outside: whoever connects under the server's client id takes its session.
    """

    return drawn_once(engine, CLIENT_SUFFIX_KEY, lambda: secrets.token_hex(8))


def server_client_ids(
    explicit: str | None, default_base: str, server_id: str, engine: Engine
) -> tuple[str, str]:
    """The server's MQTT client ids: (main connection, presence connection).

    The main one holds the persistent session (worker events wait there while the server
    restarts), so it must stay the same across this server's restarts, and differ from every
    other server's of the deployment: two servers under one id would take the session from each
    other in a loop (the broker cuts the older connection, whose supervisor reconnects at once).
    `MQTT_CLIENT_ID` when set (then each server needs its own); else
    `<default_base>-<suffix kept in the database>-<server id>`.
    """
    main = explicit or f"{default_base}-{server_client_suffix(engine)}-{server_id}"
    return main, f"{main}-presence"
