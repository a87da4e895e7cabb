"""An attacker with nothing but an ordinary broker connection (the `probe`), and a stalled database.

Issue 8, "Over MQTT": a forged or replayed Last Will, a client-id takeover, forged cancel and
confirm messages, a junk flood and ghost workers must change no job's state and cost no double
run; a worker must outlive a locked database. Each test runs on amqtt and on Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import gmqtt
import pytest
from cl_ml_tools import Job
from gmqtt.mqtt.constants import MQTTv311
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from compute.config import Settings
from compute.db.repository import JobRepository
from compute.server.flow.workers import NEGATIVE_MAX
from compute.signing import cancel_signature, confirmation_signature
from compute.topics import Topics, encode
from compute.worker.announce import offline_will
from compute_bench.noop import TASK_TYPE
from tests.support.brokers import BrokerInfo
from tests.support.fakes import GatedNoop
from tests.support.inprocess import RunningWorker, Server, WorkerFactory, running_server
from tests.support.jobs import stored
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

#: Short leases, so that a Will's lease check (half the lease) happens within a test.
LEASE = 3.0


@pytest.fixture
async def fast_server(settings: Settings) -> AsyncIterator[Server]:
    async with running_server(replace(settings, lease_seconds=LEASE)) as srv:
        yield srv


async def start_gated(start_worker: WorkerFactory, **changes: Any) -> tuple[RunningWorker, GatedNoop]:
    plugin = GatedNoop()
    # On a thread: the test holds the plugin's gate, which a plugin process could not share.
    running = await start_worker(
        tasks=(TASK_TYPE,),
        plugins={TASK_TYPE: plugin},
        lease_seconds=LEASE,
        plugin_isolation="thread",
        **changes,
    )
    return running, plugin


def add_job(server: Server) -> str:
    """A bench_noop job, stored and hinted like any other (the server has no route for it)."""
    job_id = str(uuid.uuid4())
    server.services.submitter.add_job(Job(job_id=job_id, task_type=TASK_TYPE, params={}))
    return job_id


async def running_job(server: Server, plugin: GatedNoop) -> dict[str, Any]:
    job_id = add_job(server)
    await wait_for(plugin.entered.is_set, what="the job to start")
    return await server.wait_status(job_id, "processing")


async def retained_info(probe: MqttProbe, topics: Topics, worker_id: str) -> dict[str, Any]:
    """What anyone can read: the worker's retained info, session included."""
    topic = topics.worker_info(worker_id)
    await probe.subscribe(topic)
    message = await probe.expect(lambda m: m.topic == topic and bool(m.payload), what="retained info")
    return message.json()  # type: ignore[no-any-return]


async def test_a_forged_will_never_requeues_a_running_job(
    fast_server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    server = fast_server
    registry, rescuer = server.services.registry, server.services.rescuer
    running, plugin = await start_gated(start_worker)
    worker_id = running.settings.worker_id
    await wait_for(lambda: registry.capabilities()["num_workers"] == 1, what="worker listed")
    job = await running_job(server, plugin)

    # The attack: copy the session from the retained info, publish an offline for it.
    info = await retained_info(probe, server.topics, worker_id)
    forged = {"worker_id": worker_id, "session": info["session"], "state": "offline", "timestamp": 1}
    probe.publish(server.topics.worker_info(worker_id), json.dumps(forged), retain=True)
    await wait_for(
        lambda: registry.dropped >= 1 or rescuer.rescued or registry.capabilities()["num_workers"] == 0,
        what="the forged Will to be handled",
    )
    assert rescuer.rescued == 0 and (await server.job(job["job_id"]))["status"] == "processing"
    assert registry.rejected["bad signature"] == 1 and registry.capabilities()["num_workers"] == 1

    # A real, signed Will replayed (it is public once it fired): verified, so the server looks at
    # the session's leases, and leaves the claim alone because the worker still renews it.
    real_will = offline_will(worker_id, info["session"], running.service.secret)
    probe.publish(server.topics.worker_info(worker_id), real_will, retain=True)
    await wait_for(lambda: rescuer.checks >= 1, timeout=15, what="the Will's lease check")
    assert rescuer.rescued == 0
    # The worker repaired its retained info, and is listed again.
    await wait_for(lambda: registry.capabilities()["num_workers"] == 1, what="worker listed again")

    plugin.gate.set()
    done = await server.wait_status(job["job_id"], "completed")
    row = stored(server.services.repo, job["job_id"])
    assert row.attempt == 1 and plugin.runs == 1 and done["worker_id"] == worker_id


async def test_a_dead_workers_will_still_speeds_its_rescue(
    fast_server: Server, start_worker: WorkerFactory
) -> None:
    """The other side of the rule: a verified Will for a session that stopped renewing rescues it
    (after half the lease), and the requeue is published on inference/events."""
    server = fast_server
    victim, plugin = await start_gated(start_worker)
    job = await running_job(server, plugin)
    async with MqttProbe(server.settings.broker_host, server.settings.mqtt_port) as events:
        await events.subscribe(server.topics.legacy_events)
        # A crash: its lease renewals stop, and its link drops without a DISCONNECT.
        for task in asyncio.all_tasks():
            if task.get_name() == "leases":
                task.cancel()
        victim.bus.abort()
        await wait_for(lambda: server.services.rescuer.rescued == 1, timeout=LEASE * 3, what="the rescue")
        await events.expect(
            lambda m: (
                m.topic == server.topics.legacy_events
                and json.loads(m.payload)
                == {**json.loads(m.payload), "job_id": job["job_id"], "event_type": "queued"}
            ),
            what="the requeue on inference/events",
        )
    row = stored(server.services.repo, job["job_id"])
    assert row.status == "queued" and "went offline" in row.attempt_errors[0]["error"]
    victim.worker.stop()  # before the plugin returns, so that it claims nothing more
    plugin.gate.set()


async def test_connecting_under_a_workers_old_client_id_fires_no_will(
    fast_server: Server, start_worker: WorkerFactory, broker: BrokerInfo, probe: MqttProbe
) -> None:
    server = fast_server
    running, plugin = await start_gated(start_worker)
    worker_id = running.settings.worker_id
    topics = server.topics
    job = await running_job(server, plugin)
    for topic in (topics.worker_info(worker_id), topics.worker_status(worker_id), f"{topics.root}/_sync"):
        await probe.subscribe(topic)
    await probe.expect(lambda m: m.topic == topics.worker_info(worker_id), what="retained info")

    intruders = []
    for client_id in (f"compute-worker-{worker_id}", f"compute-worker-{worker_id}-presence"):
        intruder = gmqtt.Client(client_id)
        intruder.set_config({"reconnect_retries": 0})
        await asyncio.wait_for(intruder.connect(broker.host, broker.port, version=MQTTv311), 10)
        intruders.append(intruder)
    await probe.sync(f"{topics.root}/_sync")  # the broker handled both connects before this
    try:
        wills = [
            m
            for m in probe.messages
            if m.topic in (topics.worker_info(worker_id), topics.worker_status(worker_id))
            and b"offline" in m.payload
        ]
        assert wills == [], "the broker fired the worker's Will"
        assert running.bus.connects == 1 and running.service.presence.connects == 1
        assert (await server.job(job["job_id"]))["status"] == "processing"
    finally:
        for intruder in intruders:
            await intruder.disconnect()
    plugin.gate.set()
    await server.wait_status(job["job_id"], "completed")
    assert stored(server.services.repo, job["job_id"]).attempt == 1 and plugin.runs == 1
    # Client ids carry a random part per run, published nowhere: nothing derived from the worker id.
    for bus in (running.bus, running.service.presence):
        assert bus.client_id.startswith(f"compute-worker-{worker_id}-")
        assert len(bus.client_id) >= len(f"compute-worker-{worker_id}-") + 16


async def test_a_forged_cancel_is_ignored_and_a_real_one_still_works(
    fast_server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    server = fast_server
    running, plugin = await start_gated(start_worker)
    worker = running.worker
    topic = server.topics.worker_cancel(running.settings.worker_id)
    job = await running_job(server, plugin)
    job_id = job["job_id"]

    probe.publish(topic, json.dumps({"job_id": job_id, "timestamp": 1}))  # the forgery
    guessed = cancel_signature("0" * 32, job_id, 1, 2)
    probe.publish(topic, json.dumps({"job_id": job_id, "attempt": 1, "timestamp": 2, "sig": guessed}))
    probe.publish(topic, b"\x00junk")
    await wait_for(
        lambda: getattr(worker, "rejected_cancels", 0) >= 3 or worker.current is None,
        what="the forged cancels to be handled",
    )
    assert worker.current is not None and worker.current.job_id == job_id, "a forged cancel stopped the job"
    plugin.gate.set()
    await server.wait_status(job_id, "completed")
    assert stored(server.services.repo, job_id).attempt == 1 and plugin.runs == 1

    # The server's own cancel is signed with the lease token: the worker stops, the job stays cancelled.
    plugin.gate.clear()
    plugin.entered.clear()
    second = await running_job(server, plugin)
    assert (await server.client.post(f"/jobs/{second['job_id']}/cancel")).status_code == 200
    await wait_for(lambda: worker.current is None, what="the worker to drop the cancelled job")
    cancelled = server.services.repo.get(second["job_id"])
    assert cancelled is not None and cancelled.status == "cancelled" and worker.rejected_cancels == 3
    plugin.gate.set()
    third = add_job(server)  # and the worker goes on
    await server.wait_status(third, "completed")
    assert stored(server.services.repo, second["job_id"]).status == "cancelled"


async def test_forged_confirmations_never_make_a_worker_forget_its_result(
    settings: Settings,
    engine: Engine,
    start_worker: WorkerFactory,
    probe: MqttProbe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No server here, so the real `completed` is never confirmed (as when the broker dropped it)."""
    repo = JobRepository(engine)
    job_id = str(uuid.uuid4())
    repo.add_job(Job(job_id=job_id, task_type=TASK_TYPE, params={}))
    running, plugin = await start_gated(start_worker, wait_idle=False)
    outbox = running.worker.outbox
    # Only a confirmation may end the wait while the flood is handled: the worker's own write
    # after CONFIRM_TIMEOUT (10 s, which a loaded machine can spend on the flood) would end it too.
    outbox.confirm_timeout = 3600.0
    await wait_for(plugin.entered.is_set, what="the job to start")
    plugin.gate.set()
    await wait_for(lambda: job_id in outbox.pending, what="the result to wait for its confirmation")
    claim = repo.get(job_id)

    topic = Topics.for_settings(settings).worker_confirm(running.settings.worker_id)
    forgeries: list[bytes | str] = [
        json.dumps({"job_id": job_id, "status": "completed", "timestamp": 1}),  # the forgery
        encode({"job_id": job_id, "attempt": 1, "status": "completed", "timestamp": 1, "sig": "ab" * 32}),
        encode(
            {
                "job_id": job_id,
                "attempt": 1,
                "status": "completed",
                "timestamp": 1,
                "sig": confirmation_signature("0" * 32, job_id, 1, "completed", 1),
            }
        ),
    ]
    flood = 600  # below Mosquitto's default queue per client (1,000): every one must arrive
    with caplog.at_level(logging.WARNING, logger="compute"):
        for i in range(flood):
            probe.publish(topic, forgeries[i % 3] if i % 2 else f"junk {i}".encode())
        await wait_for(
            lambda: getattr(outbox, "rejected", 0) >= flood or job_id not in outbox.pending,
            timeout=30,
            what="the flood to be handled",
        )
        assert job_id in outbox.pending, "a forged confirmation made the worker forget its result"
        assert claim is not None and claim.status == "processing"

        # With no confirmation the worker writes the result itself: the job completes, once.
        outbox.confirm_timeout = 0.0
        await wait_for(lambda: stored(repo, job_id).status == "completed", what="the result in the database")
    assert stored(repo, job_id).attempt == 1 and plugin.runs == 1
    flood_lines = [r for r in caplog.records if "confirmation" in r.getMessage()]
    assert len(flood_lines) <= 20, f"{len(flood_lines)} log lines for {flood} junk confirmations"
    repo.engine.dispose()


async def test_a_junk_flood_costs_no_result_and_no_log_flood(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe, caplog: pytest.LogCaptureFixture
) -> None:
    ingest, registry = server.services.ingest, server.services.registry
    running, plugin = await start_gated(start_worker)
    job = await running_job(server, plugin)
    root = server.settings.mqtt_topic_root
    events_topic = f"{root}/events/{TASK_TYPE}/{job['job_id']}"
    #: Per kind: junk events, forged events, junk infos. Below Mosquitto's default queue per
    #: client (1,000), so that all arrive and the test can wait for them.
    flood = 450
    with caplog.at_level(logging.WARNING, logger="compute"):
        for i in range(flood):
            probe.publish(events_topic, f"junk {i}".encode())
            forged = {
                "job_id": job["job_id"],
                "worker_id": running.settings.worker_id,
                "event": "completed",
                "progress": 100,
                "timestamp": i,
                "attempt": 1,
                "seq": 99 + i,
                "sig": "cd" * 32,
            }
            probe.publish(events_topic, json.dumps(forged))
            probe.publish(f"{root}/workers/ghost-{i}/info", json.dumps({"worker_id": f"ghost-{i}"}))
            probe.publish(f"{root}/workers/ghost-{i}/info", json.dumps({"worker_id": f"ghost-{i}"}))
        plugin.gate.set()  # the real result goes out while the flood is still arriving
        await wait_for(
            lambda: (
                ingest.rejected["malformed"] >= flood
                and registry.dropped >= 2 * flood
                and ingest.rejected["bad signature"] >= flood
            ),
            timeout=60,
            what="the flood to arrive",
        )
        done = await server.wait_status(job["job_id"], "completed", timeout=30)
        # One more job after the flood: its result is not stuck behind junk either.
        after = add_job(server)
        await server.wait_status(after, "completed", timeout=30)
    assert done["progress"] == 100 and stored(server.services.repo, job["job_id"]).attempt == 1
    assert plugin.runs == 2
    lines = [r for r in caplog.records if r.name.startswith("compute")]
    assert len(lines) <= 40, f"{len(lines)} log lines for {4 * flood} junk messages"


async def test_ghost_workers_never_reach_capabilities(
    settings: Settings, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    topics = Topics.for_settings(settings)
    ghosts = 2000

    def ghost(i: int, **extra: Any) -> bytes:
        return encode(
            {
                "worker_id": f"ghost-{i}",
                "session": uuid.uuid4().hex[:12],
                "state": "online",
                "tasks": ["image_resize"],
                "idle": True,
                "timestamp": 1,
                **extra,
            }
        )

    for i in range(ghosts):  # retained, so that the server finds them when it starts
        probe.publish(topics.worker_info(f"ghost-{i}"), ghost(i), retain=True)
    big = "x" * 500_000
    for i in range(ghosts, ghosts + 20):  # half-megabyte ghosts
        probe.publish(topics.worker_info(f"ghost-{i}"), ghost(i, hostname=big), retain=True)
    await probe.subscribe(f"{topics.root}/_sync")
    await probe.sync(f"{topics.root}/_sync")
    try:
        async with running_server(settings) as server:
            registry = server.services.registry
            # Mosquitto queues at most 1,000 messages per client (max_queued_messages): the server
            # sees at least that many of the retained ghosts. A real worker's info published while
            # that queue is full would be dropped too (and sent again at its next heartbeat).
            await wait_for(
                lambda: registry.dropped + len(registry.workers) >= 1000,
                timeout=20,
                what="the retained ghosts to reach the server",
            )
            for i in range(ghosts + 20, ghosts + 40):  # and some while it runs, with forged signatures
                probe.publish(topics.worker_info(f"ghost-{i}"), ghost(i, sig="ef" * 32))
            # A short heartbeat: an info that a full broker queue dropped comes again soon.
            real = await start_worker(heartbeat_interval=2.0)

            async def listed() -> dict[str, Any] | None:
                # Judged on the reply alone: a ghost that got in shows as num_workers > 1.
                caps = (await server.client.get("/capabilities")).json()
                return caps if caps["num_workers"] >= 1 else None

            try:
                caps = await wait_for(listed, timeout=20, what="the real worker, or ghosts, in /capabilities")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; dropped: {dict(registry.rejected)}") from None
            assert caps == {"num_workers": 1, "capabilities": {"image_conversion": 1, "image_resize": 1}}
            assert list(registry.workers) == [real.settings.worker_id]
            # Nothing of the ghosts stays in memory beyond the bounded negative cache.
            cached = registry.cached_sessions
            assert cached["unknown"] <= NEGATIVE_MAX and cached["known"] == 1
            assert registry.dropped >= 1000
    finally:  # a shared broker keeps retained messages: clear them (more than one client's queue)
        for i in range(ghosts + 20):
            probe.publish(topics.worker_info(f"ghost-{i}"), b"", retain=True)
        await probe.sync(f"{topics.root}/_sync")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQLite's write lock
async def test_a_worker_outlives_a_locked_database_and_then_runs_the_queued_jobs(
    settings: Settings, engine: Engine, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    repo = JobRepository(engine)
    running, plugin = await start_gated(start_worker)
    worker, outbox = running.worker, running.worker.outbox
    # Wait at most 0.3 s for a lock (instead of seconds), so that this test stays short.
    event.listen(
        running.service.engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout=300")
    )
    running.service.engine.dispose()  # pooled connections reconnect with the short timeout
    outbox.confirm_timeout = 0.5  # no server: the worker writes its result itself

    first = str(uuid.uuid4())
    repo.add_job(Job(job_id=first, task_type=TASK_TYPE, params={}))
    probe.publish(Topics.for_settings(settings).job_available(TASK_TYPE), b"{}")
    await wait_for(plugin.entered.is_set, what="the first job to start")
    queued = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in queued:
        repo.add_job(Job(job_id=job_id, task_type=TASK_TYPE, params={}))

    path = make_url(settings.database_url).database
    assert path is not None
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        plugin.gate.set()  # the first job finishes: its result cannot be written, claims fail
        await wait_for(
            lambda: getattr(worker, "db_errors", 0) >= 3 or running.task.done(),
            timeout=20,
            what="the worker to hit the locked database",
        )
        assert not running.task.done(), f"the worker exited: {running.task.exception()!r}"
        assert first in outbox.pending  # kept, not lost
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    async def all_done() -> bool:
        return all(stored(repo, j).status == "completed" for j in [first, *queued])

    await wait_for(all_done, timeout=30, what="every job completed once the lock is gone")
    assert all(stored(repo, j).attempt == 1 for j in [first, *queued]) and plugin.runs == 4
    assert not running.task.done()
    repo.engine.dispose()
