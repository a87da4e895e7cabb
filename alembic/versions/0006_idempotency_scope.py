"""idempotency keys stored unambiguously: `u<len>:<user>:<key>`, `g:<key>` for guests

The old form `<user or ->:<key>` let two (user, key) pairs share a stored key (user `alice:x`
with key `y`, user `alice` with key `x:y`; a user named `-` and the guests). Each row's own
`created_by` says where its user part ends, so existing keys are rewritten exactly.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("created_by", sa.String),
    sa.column("idempotency_key", sa.String),
)


def _new(created_by: str | None, key: str) -> str:
    # A copy of repository.idempotency_scope as of this revision: migrations do not follow the code.
    return f"g:{key}" if created_by is None else f"u{len(created_by)}:{created_by}:{key}"


def _old(created_by: str | None, key: str) -> str:
    return f"{created_by if created_by is not None else '-'}:{key}"


def _rewrite(convert: str) -> None:
    conn = op.get_bind()
    keyed = _jobs.c.idempotency_key.is_not(None)
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.created_by, _jobs.c.idempotency_key).where(keyed)).all()
    # Cleared first, then written: a row's new key may equal another row's old one until that
    # row is rewritten too, which the unique index would refuse.
    conn.execute(sa.update(_jobs).where(keyed).values(idempotency_key=None))
    written: set[str] = set()
    for row_id, created_by, stored in rows:
        before, after = (_old, _new) if convert == "up" else (_new, _old)
        prefix = before(created_by, "")
        # A key that does not start with its own row's user part was not written by us: dropped,
        # like a second row whose downgraded key collides with one already written.
        key = after(created_by, stored[len(prefix) :]) if stored.startswith(prefix) else None
        if key is None or key in written:
            continue
        written.add(key)
        conn.execute(sa.update(_jobs).where(_jobs.c.id == row_id).values(idempotency_key=key))


def upgrade() -> None:
    _rewrite("up")


def downgrade() -> None:
    _rewrite("down")
