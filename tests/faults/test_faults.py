"""Fault tests with real processes: kills, restarts, races and a stale Last Will.

Each waits on the database with a deadline; none sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from compute_bench.harness import wait_until
from tests.support.fault_cluster import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

#: Multiplies every deadline below: they bound waiting, they do not measure speed.
SLACK = 3


def _ancestors(pid: int) -> set[int]:
    """The parent, grandparent ... of a running process, read from /proc."""
    found: set[int] = set()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        found.add(pid)
    return found


def test_worker_killed_mid_job_completes_once_elsewhere(cluster: Cluster) -> None:
    workers = {name: cluster.start_worker(name) for name in ("fault-a", "fault-b")}
    cluster.wait_workers(2)
    [job_id] = cluster.submit(1, steps=20, step_ms=100)  # about 2 s of work
    wait_until(lambda: cluster.count(f"job_id='{job_id}' AND status='processing'"), 10 * SLACK, "claim")
    [claimed] = cluster.rows(f"job_id='{job_id}'")
    victim = claimed["worker_id"]
    [survivor] = [name for name in workers if name != victim]
    workers[victim].send_signal(signal.SIGKILL)
    # Within the lease (10 s) plus the job's own 2 s; the Last Will usually makes it much sooner.
    wait_until(lambda: cluster.count(f"job_id='{job_id}' AND status='completed'"), 20 * SLACK, "completion")
    [row] = cluster.rows(f"job_id='{job_id}'")
    assert row["attempt"] == 2
    assert row["worker_id"] == survivor
    # The plugin ran in the survivor's plugin process (a descendant: the fork server's child).
    assert workers[survivor].pid in _ancestors(json.loads(row["task_output"])["pid"])
    [lost] = json.loads(row["attempt_errors"])
    assert lost["attempt"] == 1 and (victim in lost["error"] or "lease" in lost["error"])


def start_burst(cluster: Cluster, *workers: str) -> None:
    """Start `workers`, submit 200 short jobs, return once 30 have completed."""
    for name in workers:
        cluster.start_worker(name)
    cluster.wait_workers(len(workers))
    cluster.submit(200, steps=1, step_ms=20)
    wait_until(lambda: cluster.count("status='completed'") >= 30, 30 * SLACK, "first completions")


def test_broker_restart_mid_burst_loses_nothing(cluster: Cluster) -> None:
    start_burst(cluster, "burst-a", "burst-b")
    cluster.kill_broker()
    cluster.start_broker()
    wait_until(lambda: cluster.count("status='completed'") == 200, 90 * SLACK, "all 200 completed")
    assert cluster.count("attempt <> 1") == 0, "a job ran twice"
    # Everyone comes back by themselves.
    wait_until(cluster.healthy, 20 * SLACK, "server reconnected")
    cluster.wait_workers(2)


def test_server_killed_mid_burst_persists_every_result(cluster: Cluster) -> None:
    start_burst(cluster, "srv-a", "srv-b")
    cluster.kill_server()
    cluster.start_server()
    wait_until(lambda: cluster.count("status='completed'") == 200, 90 * SLACK, "all 200 persisted")
    assert cluster.count("attempt <> 1") == 0, "a job ran twice"
    assert cluster.count("task_output IS NULL") == 0


def test_eight_workers_race_over_two_thousand_jobs(cluster: Cluster) -> None:
    job_ids = cluster.submit(2000, concurrency=16)
    assert len(set(job_ids)) == 2000
    for i in range(8):
        cluster.start_worker(f"race-{i}")
    wait_until(lambda: cluster.count("status='completed'") == 2000, 180 * SLACK, "all 2000 completed")
    again = [
        {k: r[k] for k in ("job_id", "attempt", "retry_count", "worker_id", "error_message")}
        for r in cluster.rows("attempt <> 1")
    ]
    assert not again, f"jobs claimed more than once: {again[:5]}"
    workers = {r["worker_id"] for r in cluster.rows("status='completed'")}
    assert len(workers) > 1


def test_restarted_worker_keeps_its_jobs_when_the_old_will_arrives(cluster: Cluster) -> None:
    old = cluster.start_worker("same-id")
    cluster.wait_workers(1)
    [first] = cluster.submit(1, steps=40, step_ms=100)
    wait_until(
        lambda: cluster.count(f"job_id='{first}' AND status='processing'"), 10 * SLACK, "first claimed"
    )
    [old_session] = [r["worker_session"] for r in cluster.rows(f"job_id='{first}'")]
    old.send_signal(signal.SIGSTOP)  # frozen: its connections stay open, its Will is pending
    try:
        new = cluster.start_worker("same-id")
        [second] = cluster.submit(1, steps=30, step_ms=100)
        wait_until(
            lambda: cluster.count(f"job_id='{second}' AND status='processing'"),
            15 * SLACK,
            "second claimed by the new run",
        )
        [row] = cluster.rows(f"job_id='{second}'")
        assert row["worker_session"] != old_session
        # The old session's Will arrives (takeover or keepalive): only its own job is rescued.
        wait_until(lambda: cluster.count(f"job_id='{first}' AND attempt = 2"), 20 * SLACK, "old job rescued")
        wait_until(
            lambda: cluster.count(f"job_id='{second}' AND status='completed'"),
            20 * SLACK,
            "new run's job completed",
        )
        [row] = cluster.rows(f"job_id='{second}'")
        assert row["attempt"] == 1, "the new run's job was rescued by the old Will"
        wait_until(
            lambda: cluster.count(f"job_id='{first}' AND status='completed'"),
            20 * SLACK,
            "old job completed by the new run",
        )
        assert cluster.capabilities()["num_workers"] == 1
        assert new.poll() is None
    finally:
        os.kill(old.pid, signal.SIGKILL)
