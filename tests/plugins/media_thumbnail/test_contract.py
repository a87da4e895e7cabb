"""The request CL Server's SDK sends for media_thumbnail and every field it reads back.

`MediaThumbnailClient.generate` posts `file` and `priority`, plus `width`/`height` only when
given; its MQTT test wants a progress callback before completion, its HTTP test `progress == 100`
and a `task_output`; its docs name `task_output["thumbnail_path"]`, downloadable from the job.
"""

from __future__ import annotations

import io

from PIL import Image

from tests.support.inprocess import Server, WorkerFactory
from tests.support.mqtt import MqttProbe


async def submit(server: Server, content: bytes, name: str, form: dict[str, str]) -> str:
    response = await server.client.post(
        "/jobs/media_thumbnail", data=form, files={"file": (name, content, "video/mp4")}
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["status"] == "queued" and reply["task_type"] == "media_thumbnail"
    first = await server.job(reply["job_id"])  # http_submit_job reads the job right away
    assert first["job_id"] == reply["job_id"] and first["status"] in ("queued", "processing", "completed")
    return str(reply["job_id"])


async def test_sdk_requests_and_every_field_read(
    server: Server, start_worker: WorkerFactory, sheet_video_bytes: bytes
) -> None:
    settings = server.settings
    async with MqttProbe(settings.broker_host, settings.mqtt_port) as probe:
        await probe.subscribe(settings.mqtt_topic)
        await start_worker(tasks=("media_thumbnail",))
        sized = await submit(
            server, sheet_video_bytes, "video.mp4", {"priority": "5", "width": "256", "height": "256"}
        )
        job = await server.wait_status(sized, "completed", timeout=30)
        await probe.expect(
            lambda m: (
                m.topic == settings.mqtt_topic
                and m.json()["job_id"] == sized
                and m.json()["event_type"] == "completed"
            ),
            what="the completed event",
        )

        events = [m.json() for m in probe.on_topic(settings.mqtt_topic) if m.json()["job_id"] == sized]
        kinds = [e["event_type"] for e in events]
        assert "completed" in kinds
        before = events[: kinds.index("completed")]
        assert any(e["event_type"] == "processing" and e["progress"] > 0 for e in before), events

    assert job["progress"] == 100 and job["priority"] == 5 and job["error_message"] is None
    assert job["task_type"] == "media_thumbnail"
    assert {"width": 256, "height": 256, "maintain_aspect_ratio": True}.items() <= job["params"].items()
    output = job["task_output"]
    assert output["thumbnail_path"] == "output/thumbnail.jpg" and output["media_type"] == "video"
    response = await server.client.get(f"/jobs/{sized}/files/{output['thumbnail_path']}")
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (output["width"], output["height"]) == (256, 192)

    # Without width/height the SDK sends neither: the server's default box is 256x256.
    buf = io.BytesIO()
    Image.new("RGB", (1024, 512), (200, 40, 40)).save(buf, format="PNG")
    bare = await submit(server, buf.getvalue(), "photo.png", {"priority": "5"})
    job = await server.wait_status(bare, "completed", timeout=30)
    assert job["progress"] == 100
    assert (job["params"]["width"], job["params"]["height"]) == (256, 256)
    assert job["task_output"] == {
        "thumbnail_path": "output/thumbnail.jpg",
        "media_type": "image",
        "width": 256,
        "height": 128,
    }

    for job_id in (sized, bare):
        assert (await server.client.delete(f"/jobs/{job_id}")).status_code in (200, 204)
        assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
