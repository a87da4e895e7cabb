"""What clients see of workers and queues: retained topics and GET /capabilities."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine

from compute.config import Settings
from compute.db.worker_sessions import WorkerSessions
from compute.errors import NotMigrated
from compute.plugins.registry import load_tasks
from compute.signing import verify_info
from compute.topics import Topics, parse_worker_info
from compute.worker.service import WorkerService
from tests.support.brokers import BrokerInfo
from tests.support.inprocess import Server, WorkerFactory, make_settings, running_server
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for


def _json(payload: bytes) -> dict[str, object]:
    return json.loads(payload) if payload else {}


async def test_legacy_worker_capability_is_retained_then_cleared(
    server: Server, start_worker: WorkerFactory, broker: BrokerInfo
) -> None:
    running = await start_worker()
    worker_id = running.settings.worker_id
    topic = Topics.for_settings(running.settings).legacy_worker(worker_id)

    # A client that subscribes later gets it as a retained message.
    async with MqttProbe(broker.host, broker.port) as late:
        await late.subscribe(topic)
        message = await late.expect(lambda m: m.topic == topic and bool(m.payload), what="capability")
        assert message.retained
        cap = message.json()
        assert set(cap) == {"worker_id", "id", "capabilities", "idle_count", "timestamp"}
        assert cap["worker_id"] == cap["id"] == worker_id
        assert sorted(cap["capabilities"]) == ["image_conversion", "image_resize"]
        assert cap["idle_count"] == 1 and cap["timestamp"] > 1_600_000_000_000

        await running.shutdown()
        await late.expect(lambda m: m.topic == topic and m.payload == b"", what="capability cleared")


async def test_a_stopping_worker_clears_its_retained_topics_itself(
    settings: Settings, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    """No server here: the worker's own goodbye must leave nothing stale behind."""
    running = await start_worker()
    topics = Topics.for_settings(settings)
    worker_id = running.settings.worker_id
    legacy, info, status = (
        topics.legacy_worker(worker_id),
        topics.worker_info(worker_id),
        topics.worker_status(worker_id),
    )
    for topic in (legacy, info, status):
        await probe.subscribe(topic)
    await probe.expect(lambda m: m.topic == status and m.payload == b"online", what="online")
    assert (await probe.expect(lambda m: m.topic == info and bool(m.payload))).json()["tasks"] == [
        "image_conversion",
        "image_resize",
    ]
    await probe.expect(lambda m: m.topic == legacy and bool(m.payload), what="capability")

    await running.shutdown()
    await probe.expect(lambda m: m.topic == legacy and m.payload == b"", what="capability cleared")
    await probe.expect(lambda m: m.topic == info and m.payload == b"", what="info cleared")
    await probe.expect(lambda m: m.topic == status and m.payload == b"offline", what="offline")


async def test_capabilities_follow_the_running_workers(server: Server, start_worker: WorkerFactory) -> None:
    async def capabilities() -> dict[str, object]:
        return (await server.client.get("/capabilities")).json()  # type: ignore[no-any-return]

    assert await capabilities() == {"num_workers": 0, "capabilities": {}}
    first = await start_worker()
    await start_worker(tasks=("image_resize",))

    async def both_listed() -> bool:
        return await capabilities() == {
            "num_workers": 2,
            "capabilities": {"image_conversion": 1, "image_resize": 2},
        }

    await wait_for(both_listed, what="two workers in /capabilities")
    await first.shutdown()

    async def one_left() -> bool:
        return await capabilities() == {"num_workers": 1, "capabilities": {"image_resize": 1}}

    await wait_for(one_left, what="the stopped worker to leave /capabilities")


async def test_a_crashed_worker_leaves_through_its_last_will(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    running = await start_worker()
    topics = Topics.for_settings(running.settings)
    worker_id = running.settings.worker_id
    await probe.subscribe(topics.legacy_worker(worker_id))
    await wait_for(
        lambda: server.services.registry.capabilities()["num_workers"] == 1, what="worker registered"
    )

    # Kill the link without a DISCONNECT (what a crash looks like to the broker).
    running.bus.abort()

    await wait_for(
        lambda: server.services.registry.capabilities()["num_workers"] == 0,
        what="the Will to remove the worker",
    )
    # The server clears the CL Server capability the Will could not.
    await probe.expect(lambda m: m.payload == b"", what="capability cleared by the server")


async def test_a_server_started_after_a_crash_clears_the_capability_the_will_left(
    settings: Settings, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    """The worker crashed while no server listened (a shared broker, the server stopped first):
    its Will covers `info`, not the CL Server capability. The retained Will the next server
    receives is verified against the database, and the server clears the capability then."""
    running = await start_worker()
    topics = Topics.for_settings(running.settings)
    worker_id = running.settings.worker_id
    legacy, info = topics.legacy_worker(worker_id), topics.worker_info(worker_id)
    await probe.subscribe(legacy)
    await probe.subscribe(info)
    await probe.expect(lambda m: m.topic == legacy and bool(m.payload), what="capability")
    running.bus.abort()  # a crash: the broker fires the Will
    await probe.expect(lambda m: m.topic == info and _json(m.payload).get("state") == "offline", what="Will")
    assert _json(probe.on_topic(legacy)[-1].payload)["idle_count"] == 1  # nobody cleared it

    async with running_server(settings):
        await probe.expect(lambda m: m.topic == legacy and m.payload == b"", what="capability cleared")


async def test_retained_queue_summary_counts_queued_jobs(
    server: Server, start_worker: WorkerFactory, broker: BrokerInfo, probe: MqttProbe
) -> None:
    topic = server.topics.queue("image_conversion")
    await probe.subscribe(topic)
    for _ in range(2):
        await server.submit()
    await probe.expect(lambda m: _json(m.payload).get("queued") == 2, what="queued == 2")

    async with MqttProbe(broker.host, broker.port) as late:
        await late.subscribe(topic)
        retained = await late.expect(lambda m: m.topic == topic, what="retained queue summary")
        state = retained.json()
        assert retained.retained and state["task_type"] == "image_conversion"
        assert (state["queued"], state["running"]) == (2, 0) and state["oldest_queued_age_ms"] >= 0

    await start_worker(wait_idle=False)
    await probe.expect(
        lambda m: (_json(m.payload).get("queued"), _json(m.payload).get("running")) == (0, 0),
        what="queue drained",
    )


async def test_a_worker_run_registers_its_session_and_signs_its_info(
    settings: Settings, engine: Engine, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    running = await start_worker()
    sessions = running.service.sessions
    row = sessions.get(running.worker.session)
    assert row is not None and row.stopped_at is None
    assert (row.worker_id, row.tasks, row.pid) == (
        running.settings.worker_id,
        ("image_conversion", "image_resize"),
        os.getpid(),
    )
    assert row.secret == running.service.secret and row.version and row.last_seen >= row.started_at
    # Its retained info verifies with the registered secret, and carries no secret itself.
    topic = Topics.for_settings(settings).worker_info(running.settings.worker_id)
    await probe.subscribe(topic)
    message = await probe.expect(lambda m: m.topic == topic and bool(m.payload), what="info")
    info = parse_worker_info(message.payload)
    assert verify_info(row.secret, info) and row.secret.encode() not in message.payload
    assert sessions.touch(running.worker.session)  # the heartbeat's statement

    await running.shutdown()
    # Read through the test's engine: the worker's was disposed at shutdown, and using it again
    # would open a pool nobody closes.
    after = WorkerSessions(engine)
    stopped = after.get(running.worker.session)
    assert stopped is not None and stopped.stopped_at is not None
    assert not after.touch(running.worker.session)


async def test_a_worker_on_a_database_without_worker_sessions_asks_for_compute_migrate(
    tmp_path: Path, prefix: str
) -> None:
    """A missing table is not a transient error: no retrying forever, a clear message instead."""
    nowhere = BrokerInfo("none", "127.0.0.1", 1)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}", nowhere, prefix)
    with pytest.raises(NotMigrated, match="compute-migrate"):
        WorkerService.build(settings, load_tasks(("image_resize",)))
