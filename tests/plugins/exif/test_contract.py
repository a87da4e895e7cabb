"""The SDK's ExifClient.extract: multipart `file` + `priority` only; it reads task_output as a dict
(docs: `task_output.get('Make')`, `task_output.get('DateTime')`), empty EXIF included."""

from __future__ import annotations

from tests.support.exif_samples import needs_exiftool, photo
from tests.support.inprocess import Server, WorkerFactory

pytestmark = needs_exiftool


async def submit(server: Server, content: bytes) -> str:
    response = await server.client.post(
        "/jobs/exif", data={"priority": "5"}, files={"file": ("photo.jpg", content, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["status"] == "queued"
    assert (await server.job(reply["job_id"]))["task_type"] == "exif"  # read right after submitting
    return str(reply["job_id"])


async def test_sdk_request_and_every_field_read(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("exif",))
    with_exif, without = await submit(server, photo()), await submit(server, photo(exif=False))

    job = await server.wait_status(with_exif, "completed", timeout=30)
    assert job["progress"] == 100 and job["error_message"] is None
    output = job["task_output"]
    assert isinstance(output, dict)
    assert output.get("Make") == "Canon" and output.get("DateTime") == "2024:01:02 03:04:05"

    bare = await server.wait_status(without, "completed", timeout=30)
    assert isinstance(bare["task_output"], dict) and bare["task_output"].get("Make") is None

    for job_id in (with_exif, without):
        assert (await server.client.delete(f"/jobs/{job_id}")).status_code in (200, 204)
        assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
