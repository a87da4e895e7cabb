"""A real image through the real server, bus and worker, on every broker and database."""

from __future__ import annotations

import io
import json

from PIL import Image

from compute.topics import Topics
from tests.support.events import ms_now
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory
from tests.support.mqtt import MqttProbe


async def test_image_conversion_end_to_end(server: Server, start_worker: WorkerFactory) -> None:
    worker = await start_worker()
    before = ms_now()
    created = await server.submit(
        "image_conversion", {"format": "jpg", "quality": "90"}, png_bytes((40, 30)), filename="photo.png"
    )
    assert created["status"] == "queued" and created["task_type"] == "image_conversion"
    assert set(created) == {"job_id", "status", "task_type"}
    job_id = created["job_id"]

    # The sweep interval is 30 s: finishing now means the hint woke the worker.
    job = await server.wait_status(job_id, "completed", timeout=10)
    after = ms_now()
    assert job["progress"] == 100 and job["worker_id"] == worker.settings.worker_id
    assert job["error_message"] is None
    for name in ("created_at", "started_at", "completed_at", "updated_at"):
        assert before - 1000 <= job[name] <= after + 1000, (name, job[name])  # milliseconds
    assert job["created_at"] <= job["started_at"] <= job["completed_at"]
    # CL Server's SDK reads params.output_path (relative to the job folder) and params.format.
    assert (job["params"]["output_path"], job["params"]["format"]) == ("output/converted.jpg", "jpg")
    assert job["task_output"]["output_path"] == "output/converted.jpg"

    response = await server.client.get(f"/jobs/{job_id}/files/output/converted.jpg")
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("JPEG", (40, 30))
    assert worker.worker.jobs_run == 1


async def test_resize_end_to_end(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("image_resize",))
    created = await server.submit("image_resize", {"width": "10", "height": "5"}, filename="pic.png")
    assert created["task_type"] == "image_resize"
    await server.wait_status(created["job_id"], "completed")
    response = await server.client.get(f"/jobs/{created['job_id']}/files/output/resized.png")
    assert Image.open(io.BytesIO(response.content)).size == (10, 5)


async def test_worker_claims_only_its_own_tasks(server: Server, start_worker: WorkerFactory) -> None:
    running = await start_worker(tasks=("image_resize",))
    subscribed = running.bus.subscriptions
    assert running.worker.task_types == ["image_resize"]
    assert server.topics.job_available("image_conversion") not in subscribed
    assert Topics.for_settings(running.settings).job_available("image_resize") in subscribed

    conversion = await server.submit("image_conversion")
    resize = await server.submit("image_resize")
    await server.wait_status(resize["job_id"], "completed")
    job = await server.job(conversion["job_id"])
    assert job["status"] == "queued" and job["worker_id"] is None and job["started_at"] is None
    assert running.worker.jobs_run == 1


async def test_legacy_events_follow_the_job(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    topic = server.settings.mqtt_topic
    await probe.subscribe(topic)
    await start_worker()
    job_id = (await server.submit())["job_id"]
    await probe.expect(
        lambda m: m.topic == topic and json.loads(m.payload)["event_type"] == "completed",
        what="legacy completed event",
    )
    events = [m.json() for m in probe.on_topic(topic) if m.json()["job_id"] == job_id]
    assert set(events[0]) == {"job_id", "event_type", "progress", "timestamp"}
    # One event per state: image_conversion reports progress(100) as it returns, and that report
    # is not sent (the completed event says 100).
    assert [e["event_type"] for e in events] == ["queued", "processing", "completed"]
    assert [e["progress"] for e in events] == [0, 0, 100]
    assert all(e["timestamp"] > 1_600_000_000_000 for e in events)


async def test_delete_removes_job_and_folder(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker()
    job_id = (await server.submit())["job_id"]
    await server.wait_status(job_id, "completed")
    folder = server.services.storage.job_dir(job_id)
    assert (folder / "output").is_dir()
    assert (await server.client.delete(f"/jobs/{job_id}")).status_code == 204
    assert not folder.exists()
    assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
    assert (await server.client.delete(f"/jobs/{job_id}")).status_code == 404
