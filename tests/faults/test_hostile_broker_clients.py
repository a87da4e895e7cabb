"""Issue 8 against a real deployment: an outsider on the broker, and a stalled database.

The attacker is an ordinary MQTT client of the cluster's broker. It forges a Last Will from the
session it reads in the retained info, connects under the worker's old predictable client ids,
forges cancel requests and confirmations, and floods junk; none of it may change a job's state,
run a job twice or flood the logs. Workers must outlive a SQLite write lock held longer than
their database wait. Each waits with a deadline; none sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv311

from compute_bench.harness import wait_until
from tests.support.fault_cluster import TASK, Cluster
from tests.support.mqtt import MqttProbe

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

#: Multiplies every deadline below: they bound waiting, they do not measure speed.
SLACK = 3


def claimed(cluster: Cluster, job_id: str) -> dict[str, object]:
    wait_until(lambda: cluster.count(f"job_id='{job_id}' AND status='processing'"), 10 * SLACK, "claim")
    [row] = cluster.rows(f"job_id='{job_id}'")
    return row


def attack(cluster: Cluster, scenario: object) -> None:
    """Run `scenario(probe)` with an MQTT client of the cluster's broker."""

    async def go() -> None:
        async with MqttProbe("127.0.0.1", cluster.broker_port) as probe:
            await scenario(probe)  # type: ignore[operator]

    asyncio.run(go())


def test_forged_will_and_client_id_takeover_cause_no_second_run(cluster: Cluster) -> None:
    for name in ("hostile-a", "hostile-b"):
        cluster.start_worker(name)
    cluster.wait_workers(2)
    [job_id] = cluster.submit(1, steps=40, step_ms=100)  # about 4 s of work
    row = claimed(cluster, job_id)
    victim = str(row["worker_id"])

    async def scenario(probe: MqttProbe) -> None:
        info_topic = f"compute/workers/{victim}/info"
        await probe.subscribe(info_topic)
        info = (await probe.expect(lambda m: m.topic == info_topic and bool(m.payload), what="info")).json()
        assert info["session"] == row["worker_session"]  # what anyone can read
        forged = {"worker_id": victim, "session": info["session"], "state": "offline", "timestamp": 1}
        probe.publish(info_topic, json.dumps(forged), retain=True)
        for client_id in (f"compute-worker-{victim}", f"compute-worker-{victim}-presence"):
            intruder = gmqtt.Client(client_id)
            intruder.set_config({"reconnect_retries": 0})
            await asyncio.wait_for(intruder.connect("127.0.0.1", cluster.broker_port, version=MQTTv311), 10)
            await intruder.disconnect()
        await probe.subscribe("compute/_sync")
        await probe.sync("compute/_sync")

    attack(cluster, scenario)
    wait_until(lambda: cluster.count(f"job_id='{job_id}' AND status='completed'"), 30 * SLACK, "completion")
    [row] = cluster.rows(f"job_id='{job_id}'")
    assert row["attempt"] == 1, "the job ran a second time"
    assert row["worker_id"] == victim and row["attempt_errors"] in (None, "[]")
    wait_until(lambda: "bad signature" in cluster.log("server"), 10 * SLACK, "the forgery in the server log")
    cluster.wait_workers(2)  # the victim repaired its retained info and is listed again


def test_forged_cancels_confirmations_and_a_junk_flood_change_nothing(cluster: Cluster) -> None:
    cluster.start_worker("flooded")
    cluster.wait_workers(1)
    [job_id] = cluster.submit(1, steps=30, step_ms=100)  # about 3 s of work
    claimed(cluster, job_id)
    junk = 20_000

    async def scenario(probe: MqttProbe) -> None:
        probe.publish("compute/workers/flooded/cancel", json.dumps({"job_id": job_id, "timestamp": 1}))
        probe.publish(
            "compute/workers/flooded/cancel",
            json.dumps({"job_id": job_id, "attempt": 1, "timestamp": 1, "sig": "ab" * 32}),
        )
        for i in range(junk):
            if i % 4 == 0:
                probe.publish(
                    "compute/workers/flooded/confirm",
                    json.dumps({"job_id": job_id, "status": "completed", "timestamp": i}),
                )
            elif i % 4 == 1:
                probe.publish(
                    f"compute/workers/ghost-{i}/info",
                    json.dumps(
                        {
                            "worker_id": f"ghost-{i}",
                            "session": uuid.uuid4().hex[:12],
                            "state": "online",
                            "tasks": [TASK],
                            "idle": True,
                            "timestamp": i,
                        }
                    ),
                )
            else:
                probe.publish(f"compute/events/{TASK}/{job_id}", f"junk {i}".encode())
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the client write
        # The broker acknowledges this subscription after the 20,000 messages queued before it.
        await probe.subscribe("compute/_sync", timeout=60)
        await probe.sync("compute/_sync", timeout=60)

    before = {name: len(cluster.log(name)) for name in ("server", "flooded")}
    attack(cluster, scenario)
    wait_until(lambda: cluster.count(f"job_id='{job_id}' AND status='completed'"), 60 * SLACK, "completion")
    [row] = cluster.rows(f"job_id='{job_id}'")
    assert row["attempt"] == 1 and json.loads(str(row["task_output"]))["steps"] == 30
    assert cluster.capabilities()["num_workers"] == 1  # no ghost listed
    assert cluster.workers["flooded"].poll() is None
    for name, size in before.items():
        grown = len(cluster.log(name)) - size
        assert grown < 100_000, f"the {name} log grew {grown} bytes for {junk} junk messages"


def test_workers_outlive_a_locked_sqlite_database(cluster: Cluster) -> None:
    if not cluster.database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    for name in ("locked-a", "locked-b"):
        cluster.start_worker(name)
    cluster.wait_workers(2)
    job_ids = cluster.submit(20, steps=2, step_ms=100)
    wait_until(lambda: cluster.count("status='processing'"), 10 * SLACK, "the first claims")
    lock = sqlite3.connect(cluster.database_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        # Held until both workers met it: longer than their database wait (5 s), so that claims,
        # renewals and result writes fail, as when another process holds the lock for a while.
        wait_until(
            lambda: (
                all("database is locked" in cluster.log(name) for name in cluster.workers)
                or any(p.poll() is not None for p in cluster.workers.values())
            ),
            30 * SLACK,
            "both workers to meet the lock",
        )
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert all(p.poll() is None for p in cluster.workers.values()), "a worker exited"
    wait_until(lambda: cluster.count("status='completed'") == len(job_ids), 60 * SLACK, "all jobs completed")
    assert all(p.poll() is None for p in cluster.workers.values())
