"""Engine construction: SQLite in WAL mode or PostgreSQL, from one URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from compute.errors import NotMigrated

REQUIRED_TABLES = ("jobs", "queue_entries", "server_preferences")
#: Execution option that makes a SQLite transaction take the write lock at BEGIN.
IMMEDIATE = "compute_begin_immediate"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite switch on WAL and hand transaction control to us."""
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=4,
        connect_args={"check_same_thread": False, "timeout": 30},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so writes can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of the process in WAL
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def check_migrated(engine: Engine) -> None:
    """Raise NotMigrated unless the compute tables exist."""
    try:
        names = set(inspect(engine).get_table_names())
    except Exception as exc:  # driver errors: unreachable server, bad URL ...
        raise NotMigrated(f"cannot read the database ({exc}); run `compute-migrate` first") from exc
    missing = [t for t in REQUIRED_TABLES if t not in names]
    if missing:
        raise NotMigrated(
            f"database tables missing ({', '.join(missing)}): run `compute-migrate` first"
        )
