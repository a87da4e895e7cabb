"""Engines (SQLite in WAL mode or PostgreSQL, from one URL) and write transactions on them."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from compute.errors import NotMigrated

REQUIRED_TABLES = ("jobs", "queue_entries", "server_preferences", "worker_sessions")
#: Execution option that makes a SQLite transaction take the write lock at BEGIN.
IMMEDIATE = "compute_begin_immediate"
#: Seconds a statement may wait for a locked or busy database, unless the caller says otherwise.
DEFAULT_WAIT = 30.0
#: Seconds between tries of a SQLite BEGIN IMMEDIATE (_begin_immediate): doubling from the first
#: to the last.
_FIRST_RETRY = 0.00025
_LAST_RETRY = 0.002


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


#: A transaction left idle this long by a PostgreSQL client is ended by the server (its locks go).
IDLE_IN_TRANSACTION_MS = 60_000


def make_engine(url: str, *, wait: float | None = None, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite switch on WAL and hand transaction control to us.

    `wait` (seconds) bounds how long a statement waits for the database: SQLite's busy timeout
    (a locked database, DEFAULT_WAIT when not given), the pool's wait for a connection and, on
    PostgreSQL, the connect and lock timeouts (and a statement timeout of at least 30 s) and
    the wait for a network that stopped answering (TCP user timeout, keepalives). The
    server's HTTP routes pass a short one (DB_REQUEST_TIMEOUT), so that a stalled database
    answers 503 instead of hanging; None keeps the drivers' defaults there.
    """
    wait_ms = max(1, int((DEFAULT_WAIT if wait is None else wait) * 1000))
    if not is_sqlite(url):
        if wait is not None:
            kwargs.setdefault("pool_timeout", wait)
        if wait is not None and make_url(url).get_backend_name() == "postgresql":
            # lock_timeout: a row or table lock held elsewhere; statement_timeout: a server that
            # accepts but does not answer; idle_in_transaction_session_timeout: a client whose
            # link was cut mid-transaction (a worker host gone) would hold its row locks until
            # the server's TCP keepalive noticed, hours later, and block the rescue of its jobs.
            # All as startup options, so every connection has them.
            options = (
                f"-c lock_timeout={wait_ms} -c statement_timeout={max(wait_ms, 30_000)}"
                f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
            )
            seconds = max(1, round(wait))
            kwargs.setdefault(
                "connect_args",
                {
                    "connect_timeout": seconds,
                    "options": options,
                    # A network that drops everything (a cut link, a firewall) answers nothing,
                    # and the server's own timeouts never reach us: without these a statement
                    # waited for TCP to give up (~15 min), and a worker's event loop with it.
                    # Data unacknowledged for `wait` closes the connection; so do keepalives
                    # unanswered while we wait for a reply.
                    "tcp_user_timeout": wait_ms,
                    "keepalives": 1,
                    "keepalives_idle": seconds,
                    "keepalives_interval": 1,
                    "keepalives_count": 3,
                },
            )
        return create_engine(url, pool_pre_ping=True, **kwargs)
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=4,
        pool_timeout=wait_ms / 1000,
        connect_args={"check_same_thread": False, "timeout": wait_ms / 1000},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so writes can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of the process in WAL
        cursor.execute(f"PRAGMA busy_timeout={wait_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(IMMEDIATE, False):
            _begin_immediate(conn, wait_ms)
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _begin_immediate(conn: Connection, wait_ms: int) -> None:
    """BEGIN IMMEDIATE on a SQLite connection, tried again after 0.25 ms, 0.5 ms ... (at most 2 ms
    apart) while another writer holds the lock, until `wait_ms` has passed.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms ... between tries, while our write
    transactions hold the lock for a fraction of a millisecond: py-spy found a worker in a no-op
    burst asleep in it 70% of its wall time, mostly with the lock long free again. Its busy
    timeout is off for this statement only; every other statement keeps it. Shorter first
    sleeps (50 µs, at most 1 ms) won with 2 workers but lost a third of the throughput with 8 on
    2 cores, where the waiting workers' wake-ups took the CPU the lock holder needed.
    """
    raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    # The tries skip SQLAlchemy: building its wrapped error costs ~0.1 ms per try.
    raw.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + wait_ms / 1000
        delay = _FIRST_RETRY
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, _LAST_RETRY)
    finally:
        raw.execute(f"PRAGMA busy_timeout={wait_ms}")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed when the block ends (rolled back on an error).

    On SQLite it takes the write lock at BEGIN (BEGIN IMMEDIATE): `busy_timeout` then applies
    to the wait, and no read-to-write upgrade can deadlock.
    """
    with engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
        yield conn


def ping(engine: Engine) -> None:
    """Raise unless the database answers and would accept a write to `jobs` now.

    Reads go through while another writer holds its lock (SQLite WAL, PostgreSQL MVCC), so the
    check asks for what a write needs, for a moment, within the engine's wait: SQLite's write
    lock (BEGIN IMMEDIATE), PostgreSQL's ROW EXCLUSIVE lock on `jobs`; then rolls back.
    """
    with engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin() as txn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE jobs IN ROW EXCLUSIVE MODE")
        else:
            conn.exec_driver_sql("SELECT 1")
        txn.rollback()


def check_migrated(engine: Engine) -> None:
    """Raise NotMigrated unless the compute tables exist."""
    try:
        names = set(inspect(engine).get_table_names())
    except Exception as exc:  # driver errors: unreachable server, bad URL ...
        raise NotMigrated(f"cannot read the database ({exc}); run `compute-migrate` first") from exc
    missing = [t for t in REQUIRED_TABLES if t not in names]
    if missing:
        raise NotMigrated(f"database tables missing ({', '.join(missing)}): run `compute-migrate` first")
