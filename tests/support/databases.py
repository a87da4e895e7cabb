"""Databases for the tests: the machine's PostgreSQL (one database per session or per deployment,
dropped afterwards) and an empty state between tests that share one."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import text

from compute.db.session import make_engine

#: The machine's PostgreSQL (trust authentication, user postgres).
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"


class PostgresUnavailable(Exception):
    """The machine's PostgreSQL (or the psycopg driver) is not there: the test skips with this reason."""


def pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"


@contextlib.contextmanager
def fresh_pg_database(label: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named `<label>_<random>` (its URL), dropped afterwards."""
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable("psycopg is not installed") from exc
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, connect_timeout=2, autocommit=True)
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PostgresUnavailable(
            f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} as user postgres: {reason}"
        ) from exc
    name = f"{label}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield pg_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_jobs(url: str) -> None:
    """Remove every job, the preferences a test may have set (pauses, guest mode, the storage id),
    leases and rate buckets."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE jobs, queue_entries RESTART IDENTITY")
            conn.execute(text("DELETE FROM server_preferences WHERE key LIKE 'paused:%'"))
            # A test that turned guest mode on must not leave it on for the next one.
            conn.exec_driver_sql("DELETE FROM server_preferences WHERE key = 'guest_mode'")
            # A test's server that did not give the sweep lease up must not keep the next
            # test's from its sweeps.
            conn.exec_driver_sql("DELETE FROM server_leases")
            conn.exec_driver_sql("DELETE FROM rate_buckets")  # one test's limits are not the next's
            # A server draws the storage id once per database; each test's server has storage of
            # its own, and a test that starts none must find none recorded.
            conn.exec_driver_sql("DELETE FROM server_preferences WHERE key = 'storage_id'")
    finally:
        engine.dispose()
