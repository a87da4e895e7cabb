"""Paused task types, kept in `server_preferences` (one row `paused:<task_type>` per paused task).

The database is the source of truth: the claim reads the paused keys in its own transaction
(`unpaused`) and leaves those task types out of its one statement, so a pause holds from its
commit on, for every worker, and nothing published on the bus can pause or resume anything. No
new table: a pause is a setting an admin changes at run time, which is what `server_preferences`
holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import IntegrityError

from compute.db.session import write_transaction
from compute.db.tables import preferences_table as prefs
from compute.jobs import now_ms

PREFIX = "paused:"


#: Every paused key, as an index range (';' follows ':'): LIKE would not use the index on SQLite.
_PAUSED_KEYS = select(prefs.c.key).where(prefs.c.key >= PREFIX, prefs.c.key < PREFIX[:-1] + ";")


def unpaused(conn: Connection, task_types: Sequence[str]) -> list[str]:
    """Those of `task_types` that are not paused, read on `conn` (the claim's transaction)."""
    paused = set(conn.execute(_PAUSED_KEYS).scalars())
    return [t for t in task_types if PREFIX + t not in paused]


class PausedTasks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pause(self, task_type: str, by: str | None) -> bool:
        """Pause `task_type`; False if it already was."""
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    prefs.insert().values(
                        key=PREFIX + task_type, value=json.dumps(True), updated_at=now_ms(), updated_by=by
                    )
                )
        except IntegrityError:
            return False
        return True

    def resume(self, task_type: str) -> bool:
        """Resume `task_type`; False if it was not paused."""
        with write_transaction(self.engine) as conn:
            return bool(conn.execute(delete(prefs).where(prefs.c.key == PREFIX + task_type)).rowcount)

    def paused(self) -> dict[str, int]:
        """Paused task types, each with when it was paused (ms)."""
        stmt = select(prefs.c.key, prefs.c.updated_at).where(prefs.c.key.in_(_PAUSED_KEYS))
        with self.engine.connect() as conn:
            return {key.removeprefix(PREFIX): at for key, at in conn.execute(stmt).all()}
