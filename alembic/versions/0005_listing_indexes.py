"""indexes for GET /jobs: each filter column with the listing order (created_at, id)

The single-column indexes on status and created_by give way to composite ones that start with
the same column, so they serve every query the old ones did.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_owner_created", "jobs", ["created_by", "created_at", "id"])
    op.create_index("ix_jobs_task_created", "jobs", ["task_type", "created_at", "id"])
    op.create_index("ix_jobs_worker_created", "jobs", ["worker_id", "created_at", "id"])
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_created_by", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_created_by", "jobs", ["created_by"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.drop_index("ix_jobs_worker_created", table_name="jobs")
    op.drop_index("ix_jobs_task_created", table_name="jobs")
    op.drop_index("ix_jobs_owner_created", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
