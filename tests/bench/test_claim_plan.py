"""The claim reads the partial index of queued rows in claim order, however large `jobs` grows:
no full scan, and no sort of every queued row (issue 10 item 4). The plan is the database's own
(SQLite EXPLAIN QUERY PLAN, PostgreSQL EXPLAIN) for the statement claim_next really sends.

Timing lives in `compute-bench --sections claim_scale`; this only reads plans.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from compute.db.repository import JobRepository
from compute_bench import scale

FINISHED, QUEUED = 20_000, 2_000


def test_claim_uses_the_claim_index(engine: Any) -> None:
    scale.fill(engine, "completed", FINISHED, 1)
    scale.fill(engine, "queued", QUEUED, FINISHED + 1)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # what autovacuum does after a load like this
            conn.execute(text("ANALYZE jobs"))
    repo = JobRepository(engine)
    plan = scale.claim_plan(engine, repo)
    assert scale.plan_kind(plan) == "claim index", plan
    assert scale.CLAIM_INDEX in "\n".join(plan)
    # And the statement still claims the most urgent job, once.
    first = repo.claim_next([scale.TASK], "w1")
    assert first is not None and first.job_id == f"scale-{FINISHED + 1}"
    second = repo.claim_next([scale.TASK], "w2")
    assert second is not None and second.job_id == f"scale-{FINISHED + 2}"


def test_plan_kind_reads_plans() -> None:
    assert scale.plan_kind(["SCAN jobs"]) == "full scan"
    assert scale.plan_kind(["Seq Scan on jobs  (cost=0.00..1.00 rows=1 width=4)"]) == "full scan"
    assert (
        scale.plan_kind(["SEARCH jobs USING INDEX ix_jobs_status (status=?)", "USE TEMP B-TREE FOR ORDER BY"])
        == "sort of queued rows"
    )
    assert scale.plan_kind(["SCAN jobs USING INDEX ix_jobs_claim_order"]) == "claim index"
