"""Engines and the migration check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from compute.db.migrate import upgrade_head
from compute.db.session import check_migrated, is_sqlite, make_engine
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


def test_is_sqlite() -> None:
    assert is_sqlite("sqlite:///x.db")
    assert not is_sqlite("postgresql+psycopg://postgres@127.0.0.1/x")
