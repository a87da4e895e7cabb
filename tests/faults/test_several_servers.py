"""Two compute-servers on one PostgreSQL, broker and job storage (issue 18 item 3), as real
processes: one killed with -9 in the middle of a burst of submissions spread over both.

What must hold: every submission that was answered is committed and completes exactly once;
one that was not may be lost, but never half-stored (a row without its folder; a folder without
its row only until the orphan sweep removes it); the sweeps move to the surviving server.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_bench.harness import wait_until
from tests.support.databases import PostgresUnavailable, fresh_pg_database
from tests.support.fault_cluster import FAST, Cluster
from tests.support.images import png_bytes

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

#: Multiplies every deadline below: they bound waiting, they do not measure speed.
SLACK = 3
SWEEP_LEASE = 3.0


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[Cluster]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    with contextlib.ExitStack() as stack:
        try:
            database_url = stack.enter_context(fresh_pg_database("compute_multi"))
        except PostgresUnavailable as exc:
            pytest.skip(str(exc))
        settings = {**FAST, "SWEEP_LEASE_SECONDS": str(SWEEP_LEASE), "ORPHAN_GRACE_SECONDS": "10"}
        c = Cluster(tmp_path, "mosquitto", database_url, **settings)
        stack.callback(c.stop)
        c.start_broker()
        c.migrate()
        yield c


def test_a_server_killed_mid_burst_loses_nothing_it_answered(two_servers: Cluster) -> None:
    cluster = two_servers
    # The first server takes the sweep lease before the second starts: its death moves them.
    first = cluster.start_server("srv-a")
    wait_until(lambda: cluster.health("srv-a")["sweeps"], 30 * SLACK, "srv-a runs the sweeps")
    second = cluster.start_server("srv-b")
    assert cluster.health("srv-b")["sweeps"] is False
    for name in ("w-1", "w-2"):
        cluster.start_worker(name, tasks="image_conversion")
    cluster.wait_workers(2)

    killed = threading.Event()

    def kill_mid_burst() -> None:
        wait_until(lambda: cluster.count("1=1") >= 60, 60 * SLACK, "a third of the burst stored")
        cluster.kill_server("srv-a")
        killed.set()

    killer = threading.Thread(target=kill_mid_burst)
    killer.start()
    # Jobs with an upload: the folder is stored first, then the row, then the answer.
    answered, unanswered = cluster.submit_alternating(
        [first, second], 180, "image_conversion", {"format": "jpg"}, png_bytes((64, 48))
    )
    killer.join()
    assert killed.is_set()
    assert unanswered > 0, "the kill came after the burst: nothing was tested"
    assert len(answered) > 90  # srv-b answered its half, and srv-a some before it died

    # Every answered job is there and completes, once.
    quoted = ",".join(f"'{job_id}'" for job_id in answered)
    wait_until(
        lambda: cluster.count(f"job_id IN ({quoted}) AND status = 'completed'") == len(answered),
        90 * SLACK,
        "every answered job completed",
    )
    assert cluster.count(f"job_id IN ({quoted}) AND attempt <> 1") == 0, "a job ran twice"
    assert cluster.count("task_output IS NULL AND status = 'completed'") == 0

    # The survivor took the sweeps over (by the lease's expiry: srv-a gave nothing up).
    wait_until(lambda: cluster.health("srv-b")["sweeps"], (SWEEP_LEASE * 2 + 5) * SLACK, "srv-b sweeps")
    # Nothing half-stored: each row has its folder; a folder without a row (an upload srv-a
    # stored but never committed) is removed by the orphan sweep, now srv-b's.
    rows = {r["job_id"] for r in cluster.rows()}
    assert rows <= cluster.job_folders(), "a job without its folder"
    wait_until(lambda: cluster.job_folders() == rows, 60 * SLACK, "orphan folders removed")
    # Whatever was stored but not answered completes too (its row committed before the kill).
    wait_until(lambda: cluster.count("status <> 'completed'") == 0, 60 * SLACK, "every stored job done")
    assert cluster.count("attempt <> 1") == 0
