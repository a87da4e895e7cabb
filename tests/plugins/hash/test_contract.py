"""The SDK's HashClient.compute: multipart `file` + `priority` only; it reads job fields and task_output."""

from __future__ import annotations

import re

from tests.support.hash_samples import blocks, encoded
from tests.support.inprocess import Server, WorkerFactory

HEX64 = re.compile(r"^[0-9a-f]{16}$")


async def test_sdk_request_and_every_field_read(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("hash",))
    response = await server.client.post(
        "/jobs/hash",
        data={"priority": "5"},
        files={"file": ("photo.jpg", encoded(blocks(7), "JPEG"), "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["status"] == "queued"
    job_id = reply["job_id"]
    assert (await server.job(job_id))["task_type"] == "hash"  # read right after submitting

    job = await server.wait_status(job_id, "completed", timeout=30)
    assert job["progress"] == 100 and job["error_message"] is None
    output = job["task_output"]
    assert isinstance(output, dict)  # what the SDK's tests assert
    # What the SDK's docs read, and what the upstream task returns.
    assert HEX64.match(output["phash"]) and HEX64.match(output["dhash"])
    assert output["media_type"] == "image"

    assert (await server.client.delete(f"/jobs/{job_id}")).status_code in (200, 204)
    assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
