"""claim leases: attempt, worker_session, lease_token, lease_expires_at, event_seq, timeouts, retries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("worker_session", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("event_seq", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("timeout_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("attempt_errors", sa.Text(), nullable=True))
    op.create_index(
        "ix_jobs_running_lease",
        "jobs",
        ["lease_expires_at"],
        sqlite_where=sa.text("status = 'processing'"),
        postgresql_where=sa.text("status = 'processing'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_running_lease", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in ("attempt_errors", "next_attempt_at", "timeout_seconds", "event_seq",
                     "lease_expires_at", "lease_token", "worker_session", "attempt"):
            batch.drop_column(name)
