"""Bad input on the bus, graceful stop, and a broker that comes and goes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cl_ml_tools.plugins.image_conversion import ImageConversionTask

from compute.jobs import now_ms
from compute_bench.harness import free_port
from tests.support.brokers import AmqttBroker, AmqttProcess, BrokerInfo
from tests.support.inprocess import Server, WorkerFactory, make_settings, running_server
from tests.support.jobs import stored
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for


async def test_malformed_and_foreign_events_are_dropped(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    ingest = server.services.ingest
    waiting = (await server.submit())["job_id"]
    root = server.settings.mqtt_topic_root
    foreign = {
        "job_id": waiting,
        "worker_id": "intruder",
        "event": "completed",
        "progress": 100,
        "timestamp": now_ms(),
        "task_output": {"forged": True},
        "attempt": 1,
        "seq": 1,
        "sig": "0" * 64,
    }
    probe.publish(f"{root}/events/x/y", b"\x00not json at all")
    probe.publish(f"{root}/events/x/y", json.dumps({"hello": "world"}))
    probe.publish(f"{root}/events/x/y", json.dumps({**foreign, "job_id": "not-y"}))  # topic says y
    probe.publish(f"{root}/events/image_conversion/{waiting}", json.dumps(foreign))  # no claim
    await wait_for(
        lambda: ingest.rejected["malformed"] == 3 and ingest.rejected["bad signature"] == 1,
        what="3 malformed dropped, 1 forged refused",
    )

    assert (await server.client.get("/")).status_code == 200
    job = await server.job(waiting)
    assert job["status"] == "queued" and job["task_output"] is None

    await start_worker(wait_idle=False)
    await server.wait_status(waiting, "completed")
    done = await server.wait_status((await server.submit())["job_id"], "completed")
    assert done["task_output"]["format"] == "jpg"


class GatedConversion(ImageConversionTask):  # type: ignore[misc]  # cl_ml_tools ships no types
    """The real conversion, held at its start until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def execute(self, job: Any, params: Any, progress_callback: Any = None) -> dict[str, Any]:
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        result: dict[str, Any] = await super().execute(job, params, progress_callback)
        return result


async def test_graceful_stop_hands_the_running_job_back_at_once(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    plugin = GatedConversion()
    # On a thread: the test holds the plugin's gate, which a plugin process could not share.
    running = await start_worker(
        tasks=("image_conversion",), plugins={"image_conversion": plugin}, plugin_isolation="thread"
    )
    current = (await server.submit())["job_id"]
    await wait_for(plugin.entered.is_set, what="the job to start")
    following = (await server.submit())["job_id"]
    await probe.subscribe(server.topics.legacy_events)

    running.worker.stop()  # what the first SIGTERM does; the plugin's gate stays shut
    await asyncio.wait_for(running.task, 10)
    assert running.worker.outbox.written_directly == 0  # the server took the release itself
    row = stored(server.services.repo, current)
    # Queued again at once (no backoff), no error recorded, and the attempt does not count.
    assert row.status == "queued" and row.worker_id is None and row.attempt == 1
    retries = server.settings.task_policies.for_task("image_conversion").max_retries
    assert row.attempt_errors == () and row.max_retries == retries + 1
    requeued = {"job_id": current, "event_type": "queued"}
    await probe.expect(
        lambda m: json.loads(m.payload) == {**json.loads(m.payload), **requeued},
        what="the requeue on inference/events",
    )
    assert (await server.job(following))["status"] == "queued"  # nothing new after stop()

    await start_worker(tasks=("image_conversion",), wait_idle=False)
    job = await server.wait_status(current, "completed")
    assert job["progress"] == 100
    assert stored(server.services.repo, current).attempt == 2


@pytest.mark.parametrize("broker", ["amqtt"], indirect=True)  # the test runs its own broker
async def test_server_starts_without_broker_and_connects_when_it_appears(
    tmp_path: Path, db_url: str, prefix: str, start_worker: WorkerFactory, broker: BrokerInfo
) -> None:
    port = free_port()
    settings = make_settings(tmp_path, db_url, BrokerInfo("amqtt", "127.0.0.1", port), prefix)
    late_broker = AmqttBroker(port)
    try:
        async with running_server(settings, wait_connected=False) as server:
            health = (await server.client.get("/")).json()
            assert health["status"] == "healthy" and health["mqtt_connected"] is False
            job_id = (await server.submit())["job_id"]
            assert server.services.dispatcher.unsent == 1  # the hint could not be sent

            await late_broker.start()
            bus = server.services.bus
            await wait_for(lambda: bus.connected, timeout=15, what="server bus to connect")
            assert (await server.client.get("/")).json()["mqtt_connected"] is True

            # The worker's first pass (on connect) finds the job whose hint was lost.
            running = await start_worker(mqtt_port=port, wait_idle=False)
            await server.wait_status(job_id, "completed")
            await running.shutdown()
    finally:
        await late_broker.stop()


@pytest.mark.parametrize("broker", ["amqtt"], indirect=True)  # the test runs its own broker
async def test_both_sides_reconnect_and_resubscribe_after_a_broker_restart(
    tmp_path: Path, db_url: str, prefix: str, start_worker: WorkerFactory, broker: BrokerInfo
) -> None:
    port = free_port()
    settings = make_settings(tmp_path, db_url, BrokerInfo("amqtt", "127.0.0.1", port), prefix)
    broker_process = await AmqttProcess(port).start()
    try:
        async with running_server(settings) as server:
            bus = server.services.bus
            running = await start_worker(mqtt_port=port)
            outbox = running.worker.outbox
            await server.wait_status((await server.submit())["job_id"], "completed")
            # Its confirmation reached the worker too (else the outbox writes it once the link drops).
            await wait_for(lambda: not outbox.pending, what="the first result confirmed")

            await broker_process.stop()
            await wait_for(lambda: not bus.connected and not running.bus.connected, what="link lost")
            await broker_process.start()
            await wait_for(lambda: bus.connected and running.bus.connected, timeout=15, what="reconnect")
            # At least once more each (an amqtt process may drop a connection it accepted while it
            # was still starting; the supervisor then connects again, which is the point).
            assert bus.connects >= 2 and running.bus.connects >= 2

            # The sweep is 30 s: finishing now needs the hint subscription restored, and the
            # server's event subscription too (or the result waits for the outbox timeout).
            job_id = (await server.submit())["job_id"]
            await server.wait_status(job_id, "completed", timeout=8)
            assert outbox.written_directly == 0
            await running.shutdown()
    finally:
        await broker_process.stop()
