"""The Alembic scripts at head build exactly the tables db/tables.py describes, on SQLite and
PostgreSQL: a model change without its migration (or the reverse) fails here."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Index

from compute.db.tables import Base


def _differences(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    return [d for d in diffs if not _expression_index(d)]


def _expression_index(diff: Any) -> bool:
    """Alembic cannot compare an index on an expression (`priority DESC`) and reports it as
    removed and added again; the claim-order index is checked by name below instead."""
    return (
        isinstance(diff, tuple)
        and diff[0] in ("add_index", "remove_index")
        and isinstance(diff[1], Index)
        and diff[1].name == "ix_jobs_claim_order"
    )


def test_migrations_at_head_equal_the_models(engine: Any) -> None:
    assert _differences(engine) == []
    from sqlalchemy import inspect

    indexes = {ix["name"] for ix in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_claim_order", "ix_jobs_running_lease", "ix_jobs_idempotency_key"} <= indexes
