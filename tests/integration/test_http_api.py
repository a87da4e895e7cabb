"""HTTP API answers without a worker: errors, downloads, admin routes, health."""

from __future__ import annotations

from dataclasses import replace

import pytest

from compute.config import Settings
from compute.jobs import EventType
from tests.support.events import signed
from tests.support.images import png_bytes
from tests.support.inprocess import Server, running_server
from tests.support.jobs import set_columns
from tests.support.mqtt import Message

# The broker plays no part in these answers: one is enough (the database still varies).
pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)


async def test_health(server: Server) -> None:
    body = (await server.client.get("/")).json()
    assert body["status"] == "healthy" and body["service"] == "compute" and body["mqtt_connected"] is True


async def test_unknown_task_type_is_404_with_the_reason(server: Server) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    response = await server.client.post("/jobs/teleport", data={"format": "png"}, files=files)
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "unknown task type 'teleport'" in detail
    assert "image_conversion" in detail and "image_resize" in detail


@pytest.mark.parametrize(
    "data",
    [{"format": "exe"}, {"format": "png", "quality": "0"}, {"format": "png", "priority": "11"}, {}],
    ids=["bad-format", "quality-0", "priority-11", "no-format"],
)
async def test_invalid_params_are_422(server: Server, data: dict[str, str]) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    response = await server.client.post("/jobs/image_conversion", data=data, files=files)
    assert response.status_code == 422
    assert server.services.repo.queue_summary() == []  # nothing was queued


async def test_missing_file_is_422(server: Server) -> None:
    response = await server.client.post("/jobs/image_conversion", data={"format": "png"})
    assert response.status_code == 422


async def test_unknown_job_is_404(server: Server) -> None:
    for method, path in (
        ("GET", "/jobs/nope"),
        ("DELETE", "/jobs/nope"),
        ("GET", "/jobs/nope/files/output/x.png"),
    ):
        response = await server.client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "nope" in response.json()["detail"]


async def test_files_outside_the_job_folder_are_refused(server: Server) -> None:
    job_id = (await server.submit())["job_id"]
    storage = server.services.storage
    (storage.root / "secret.txt").write_text("top secret")
    other = (await server.submit())["job_id"]

    input_file = await server.client.get(f"/jobs/{job_id}/files/input/upload.png")  # stored name
    assert input_file.status_code == 200 and input_file.content == png_bytes()

    escapes = [
        f"/jobs/{job_id}/files/..%2F..%2Fsecret.txt",
        f"/jobs/{job_id}/files/input%2F..%2F..%2F{other}%2Finput%2Fupload.png",
        f"/jobs/{job_id}/files/%2Fetc%2Fpasswd",
        f"/jobs/{job_id}/files/{storage.root}/secret.txt",
    ]
    for url in escapes:
        response = await server.client.get(url)
        assert response.status_code == 403, (url, response.status_code)
        assert b"top secret" not in response.content and b"root:" not in response.content
    missing = await server.client.get(f"/jobs/{job_id}/files/output/none.png")
    assert missing.status_code == 404


async def test_upload_over_the_limit_is_413_and_leaves_nothing(settings: Settings) -> None:
    small = replace(settings, max_upload_bytes=100)
    async with running_server(small) as server:
        files = {"file": ("a.png", b"x" * 101, "image/png")}
        response = await server.client.post("/jobs/image_conversion", data={"format": "png"}, files=files)
        assert response.status_code == 413
        assert server.services.repo.queue_summary() == []
        jobs_root = server.services.storage.jobs_root
        assert not jobs_root.exists() or list(jobs_root.iterdir()) == []


async def test_priority_is_stored(server: Server) -> None:
    job_id = (await server.submit(data={"format": "png", "priority": "9"}))["job_id"]
    job = await server.job(job_id)
    assert job["priority"] == 9 and job["status"] == "queued" and job["params"]["format"] == "png"


async def test_admin_storage_size_and_cleanup(server: Server) -> None:
    repo = server.services.repo
    done = (await server.submit())["job_id"]
    waiting = (await server.submit())["job_id"]
    claimed = repo.claim_next(["image_conversion"], "w1")
    assert claimed is not None and claimed.job_id == done  # the older of two equal-priority jobs
    server.services.transitions.apply_events(
        [signed(claimed, EventType.COMPLETED, 1, progress=100, task_output={}, ts=1000)]
    )
    # completed_at is the database's time of the completion (not the worker's timestamp):
    # moved back to long ago, so that the cleanup finds it old.
    set_columns(server, done, completed_at=1000)
    size = (await server.client.get("/admin/jobs/storage/size")).json()
    assert size["job_count"] == 2 and size["total_size"] == 2 * len(png_bytes())

    kept = await server.client.delete("/admin/jobs/cleanup", params={"days": 7})
    assert kept.json()["deleted_count"] == 1  # completed at t=1000 ms, long ago
    assert (await server.client.get(f"/jobs/{done}")).status_code == 404
    assert not server.services.storage.job_dir(done).exists()
    assert (await server.client.get(f"/jobs/{waiting}")).status_code == 200
    assert kept.json()["freed_space"] == len(png_bytes())
    assert (await server.client.delete("/admin/jobs/cleanup", params={"days": -1})).status_code == 422


async def test_a_cancelled_or_deleted_job_releases_cl_server_waiters(server: Server) -> None:
    """CL Server's SDK waits for `completed` or `failed` (polling and on inference/events)."""
    from tests.support.mqtt import MqttProbe

    settings = server.settings
    async with MqttProbe(settings.broker_host, settings.mqtt_port) as probe:
        await probe.subscribe(settings.mqtt_topic)
        cancelled = (await server.submit())["job_id"]
        deleted = (await server.submit())["job_id"]

        response = await server.client.post(f"/jobs/{cancelled}/cancel")
        assert response.status_code == 200
        assert (response.json()["status"], response.json()["cancelled"]) == ("failed", True)
        polled = await server.job(cancelled)
        assert (polled["status"], polled["cancelled"]) == ("failed", True)
        assert polled["error_message"] == "cancelled"
        assert (await server.client.delete(f"/jobs/{deleted}")).status_code == 204
        assert (await server.client.get(f"/jobs/{deleted}")).status_code == 404  # the SDK's poll raises

        for job_id in (cancelled, deleted):

            def terminal(m: Message, j: str = job_id) -> bool:
                return bool(m.json()["job_id"] == j and m.json()["event_type"] != "queued")

            event = await probe.expect(terminal, what=f"terminal event for {job_id}")
            assert event.json()["event_type"] == "failed"
    # The database keeps the truth.
    record = server.services.repo.get(cancelled)
    assert record is not None and record.status == "cancelled"
