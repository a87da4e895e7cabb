"""Engines and the migration check."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from compute.db.migrate import upgrade_head
from compute.db.session import check_migrated, is_sqlite, make_engine, write_transaction
from compute.errors import NotMigrated


def test_unmigrated_database_names_compute_migrate(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(NotMigrated, match="compute-migrate"):
            check_migrated(engine)
    finally:
        engine.dispose()


def test_upgrade_head_creates_the_tables_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade_head(url)
    upgrade_head(url)
    engine = make_engine(url)
    try:
        check_migrated(engine)
        names = set(inspect(engine).get_table_names())
        assert {"jobs", "queue_entries", "alembic_version"} <= names
        indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
        assert "ix_jobs_claim_order" in indexes
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def test_a_write_waits_for_the_lock_then_gets_it_and_gives_up_at_the_deadline(sqlite_url: str) -> None:
    holder, waiter = make_engine(sqlite_url), make_engine(sqlite_url, wait=2.0)
    try:
        with write_transaction(holder):  # holds the write lock ...
            got: list[float] = []  # when the waiter got the lock

            def write() -> None:
                with write_transaction(waiter) as conn:
                    got.append(time.monotonic())
                    assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2000  # restored

            thread = threading.Thread(target=write)
            thread.start()
            thread.join(0.2)
            assert thread.is_alive() and not got  # waiting: BEGIN IMMEDIATE is tried again and again
        thread.join(5)  # ... until here: then it has it
        assert got

        short = make_engine(sqlite_url, wait=0.3)
        with write_transaction(holder):
            started = time.monotonic()
            with pytest.raises(OperationalError, match="locked"), write_transaction(short):
                pass
            assert 0.3 <= time.monotonic() - started < 5.0  # its own deadline, not the 30 s default
        short.dispose()
    finally:
        holder.dispose()
        waiter.dispose()


def test_is_sqlite() -> None:
    assert is_sqlite("sqlite:///x.db")
    assert not is_sqlite("postgresql+psycopg://postgres@127.0.0.1/x")
