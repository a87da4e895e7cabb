"""Server preferences an admin changes at run time (guest mode), and values drawn once and then
shared by every server process (`drawn_once`), kept in `server_preferences`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from compute.db.session import write_transaction
from compute.db.tables import preferences_table as prefs
from compute.jobs import now_ms

GUEST_MODE = "guest_mode"


class PreferenceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            raw = conn.execute(select(prefs.c.value).where(prefs.c.key == key)).scalar_one_or_none()
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, by: str | None) -> None:
        values = {"value": json.dumps(value), "updated_at": now_ms(), "updated_by": by}
        with write_transaction(self.engine) as conn:
            changed = conn.execute(update(prefs).where(prefs.c.key == key).values(**values)).rowcount
            if not changed:
                try:
                    with conn.begin_nested():
                        conn.execute(prefs.insert().values(key=key, **values))
                except IntegrityError:  # inserted meanwhile by another server process
                    conn.execute(update(prefs).where(prefs.c.key == key).values(**values))


def drawn_once(engine: Engine, key: str, draw: Callable[[], str]) -> str:
    """The value kept under `key`; `draw()` stored there first when there is none. Two processes
    that draw at once agree: the second insert fails and both read the first one's value."""

    def read() -> str | None:
        with engine.connect() as conn:
            raw = conn.execute(select(prefs.c.value).where(prefs.c.key == key)).scalar()
        return None if raw is None else str(json.loads(raw))

    found = read()
    if found:
        return found
    try:
        with write_transaction(engine) as conn:
            conn.execute(
                insert(prefs).values(
                    key=key, value=json.dumps(draw()), updated_at=now_ms(), updated_by="compute-server"
                )
            )
    except IntegrityError:  # another server process drew one first: use theirs
        pass
    return read() or ""


def read_text(engine: Engine, key: str) -> str | None:
    """The text value kept under `key`, or None (a process that must not draw one reads it so)."""
    with engine.connect() as conn:
        raw = conn.execute(select(prefs.c.value).where(prefs.c.key == key)).scalar()
    return None if raw is None else str(json.loads(raw))
