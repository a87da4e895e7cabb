"""Hosts whose clocks disagree (issue 18 item 2): a server and workers a minute apart still run
every job once, renew leases past their length without being rescued, and rescue a dead worker.

Each process's wall clock is put off by compute_bench.launch (COMPUTE_BENCH_CLOCK_OFFSET); the
database keeps the true time. Leases are 10 s (fault_cluster.FAST), the skew is larger than that:
an expiry computed by a worker behind the sweeping server would look expired at once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_bench.harness import wait_until
from tests.support.databases import PostgresUnavailable, fresh_pg_database
from tests.support.fault_cluster import FAST, Cluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

#: Seconds the server's clock is ahead of the database's; the workers' are this far either way.
SKEW = 60.0
#: The factor on waits, for a loaded 2-core CI machine.
SLACK = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def skewed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A broker, the database, and a server whose clock is SKEW ahead (it runs the sweeps)."""
    broker_kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
    with contextlib.ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            try:
                database_url = stack.enter_context(fresh_pg_database("compute_skew"))
            except PostgresUnavailable as exc:
                pytest.skip(str(exc))
        c = Cluster(tmp_path, broker_kind, database_url, **FAST)
        stack.callback(c.stop)
        c.start_broker()
        c.migrate()
        c.start_server(clock_offset=SKEW)
        yield c


def test_workers_a_minute_off_claim_renew_and_complete_once_and_a_dead_one_is_rescued(
    skewed: Cluster,
) -> None:
    workers = {
        "skew-behind": skewed.start_worker("skew-behind", clock_offset=-SKEW),
        "skew-ahead": skewed.start_worker("skew-ahead", clock_offset=SKEW / 2),
    }
    skewed.wait_workers(2)  # their presence, two minutes and half a minute off the server's clock
    # 12 s each, past the 10 s lease: only renewals keep them; one slot per worker, so one each.
    jobs = skewed.submit(2, steps=24, step_ms=500)
    wait_until(
        lambda: {r["worker_id"] for r in skewed.rows("status='processing'")} == set(workers),
        30 * SLACK,
        "each worker to claim one",
    )
    ids = ", ".join(f"'{j}'" for j in jobs)
    wait_until(
        lambda: skewed.count(f"job_id IN ({ids}) AND status='completed'") == 2, 40 * SLACK, "both done"
    )
    for row in skewed.rows(f"job_id IN ({ids})"):
        assert row["attempt"] == 1, row  # never rescued while its worker renewed
        assert not json.loads(row["attempt_errors"] or "[]"), row
        assert row["started_at"] <= row["completed_at"]  # one clock: the database's

    # A worker killed mid-job is still rescued, and the job completes once on the other.
    [job_id] = skewed.submit(1, steps=24, step_ms=500)
    wait_until(lambda: skewed.rows(f"job_id='{job_id}' AND status='processing'"), 30 * SLACK, "the claim")
    [claimed] = skewed.rows(f"job_id='{job_id}'")
    victim = claimed["worker_id"]
    [survivor] = [name for name in workers if name != victim]
    workers[victim].kill()
    wait_until(lambda: skewed.count(f"job_id='{job_id}' AND status='completed'"), 40 * SLACK, "completion")
    [row] = skewed.rows(f"job_id='{job_id}'")
    assert (row["attempt"], row["worker_id"]) == (2, survivor)
