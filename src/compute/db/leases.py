"""Leases between the servers of one deployment: who does a job that must run on one at a time.

A lease is a row of `server_leases` (name, holder, expiry). `hold` takes it when it is free or
expired, or renews it for its holder, in one statement; the expiry is computed and compared by
the database's clock, never a server's, since hosts' clocks may differ by seconds. A holder that
dies stops renewing, and another server takes the lease once it expired; one that stops cleanly
`release`s it, so another takes it at its next try.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Engine, literal_column, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from compute.db.session import write_transaction
from compute.db.tables import server_leases_table as leases


def database_now_ms(dialect: str) -> ColumnElement[int]:
    """The database's current time in milliseconds since the epoch, as an SQL expression."""
    if dialect == "postgresql":
        # clock_timestamp(), not now(): the time of the statement, not of the transaction.
        sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    else:  # SQLite: julianday('now') counts days, with milliseconds
        sql = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    return literal_column(sql, BigInteger)


class Leases:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def hold(self, name: str, holder: str, seconds: float) -> bool:
        """Take `name` for `holder` for `seconds` from now (the database's time) when it is free,
        expired or already `holder`'s; True if `holder` holds it now."""
        now = database_now_ms(self.dialect)
        until = now + int(seconds * 1000)
        insert: Any = (postgresql if self.dialect == "postgresql" else sqlite).insert(leases)
        statement = (
            insert.values(name=name, holder=holder, expires_at=until)
            .on_conflict_do_update(
                index_elements=[leases.c.name],
                set_={"holder": holder, "expires_at": until},
                where=or_(leases.c.holder == holder, leases.c.expires_at < now),
            )
            .returning(leases.c.holder)
        )
        with write_transaction(self.engine) as conn:
            return conn.execute(statement).scalar() == holder

    def release(self, name: str, holder: str) -> None:
        """Give `name` up now, if `holder` holds it (another server takes it at its next try)."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(leases).where(leases.c.name == name, leases.c.holder == holder).values(expires_at=0)
            )

    def holder(self, name: str) -> str | None:
        """Who holds `name` now (None: nobody, or the lease expired)."""
        now = database_now_ms(self.dialect)
        with self.engine.connect() as conn:
            return conn.execute(
                leases.select()
                .with_only_columns(leases.c.holder)
                .where(leases.c.name == name, leases.c.expires_at >= now)
            ).scalar()
