"""The request CL Server clients send (multipart `file`, every field a string) and what they read back.

image_resize is not in the SDK's plugin list; this holds it to the same mechanics as the SDK's
plugins: submit reply, an immediately readable job, `progress == 100`, a downloadable result, DELETE.
"""

from __future__ import annotations

import io

from PIL import Image

from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory


async def test_sdk_request_and_every_field_read(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("image_resize",))
    form = {"priority": "5", "width": "16", "height": "12", "maintain_aspect_ratio": "True"}
    response = await server.client.post(
        "/jobs/image_resize", data=form, files={"file": ("photo.png", png_bytes((64, 48)), "image/png")}
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["status"] == "queued" and reply["task_type"] == "image_resize"
    job_id = reply["job_id"]

    # http_submit_job reads the job right after submitting.
    first = await server.job(job_id)
    assert first["job_id"] == job_id and first["task_type"] == "image_resize"

    job = await server.wait_status(job_id, "completed", timeout=30)
    assert job["progress"] == 100 and job["priority"] == 5 and job["error_message"] is None
    assert {"width": 16, "height": 12, "maintain_aspect_ratio": True}.items() <= job["params"].items()
    output = job["task_output"]
    assert output == {"output_path": "output/resized.png", "width": 16, "height": 12}
    content = (await server.client.get(f"/jobs/{job_id}/files/{output['output_path']}")).content
    assert Image.open(io.BytesIO(content)).size == (16, 12)

    assert (await server.client.delete(f"/jobs/{job_id}")).status_code in (200, 204)
    assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
