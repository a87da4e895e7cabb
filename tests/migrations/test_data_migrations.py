"""Migrations that rewrite data do it exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from compute.db.migrate import alembic_dir
from compute.db.repository import idempotency_scope
from tests.support.databases import PostgresUnavailable, fresh_pg_database


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A database with no tables, migrated by the test itself."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'compute.db'}"
        return
    try:
        with fresh_pg_database("compute_mig") as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def test_idempotency_keys_are_rewritten_to_the_unambiguous_form(empty_url: str) -> None:
    command.upgrade(_alembic(empty_url), "0005")
    old = [
        ("a", "alice", "alice:x:y"),  # alice, key x:y
        ("b", "alice:x", "alice:x:y2"),  # alice:x, key y2
        ("c", None, "-:k"),  # a guest
        ("d", "-", "-:k2"),  # the user named "-"
        ("e", "bob", None),
    ]
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            for job_id, user, key in old:
                conn.execute(
                    text(
                        "INSERT INTO jobs (job_id, task_type, params, status, progress, created_at, "
                        "retry_count, max_retries, created_by, idempotency_key) "
                        "VALUES (:j, 't', '{}', 'queued', 0, 1, 0, 3, :u, :k)"
                    ),
                    {"j": job_id, "u": user, "k": key},
                )
        command.upgrade(_alembic(empty_url), "head")
        with engine.connect() as conn:
            stored: dict[str, str | None] = dict(
                conn.execute(text("SELECT job_id, idempotency_key FROM jobs")).all()
            )
        assert stored == {
            "a": idempotency_scope("alice", "x:y"),
            "b": idempotency_scope("alice:x", "y2"),
            "c": idempotency_scope(None, "k"),
            "d": idempotency_scope("-", "k2"),
            "e": None,
        }
        command.downgrade(_alembic(empty_url), "0005")
        with engine.connect() as conn:
            back: dict[str, str | None] = dict(
                conn.execute(text("SELECT job_id, idempotency_key FROM jobs")).all()
            )
        assert back == {job_id: key for job_id, _, key in old}
    finally:
        engine.dispose()
