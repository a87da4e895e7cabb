"""The request CL Server's SDK sends for hls_streaming and every field it reads back.

`HlsStreamingClient.generate_manifest(video)` posts `file`, `include_original="true"` (its
default, lower-cased) and `priority`; its tests assert `"master_playlist"` and
`"variants_generated"` at the top of `task_output` and then delete the job.
"""

from __future__ import annotations

from tests.support.inprocess import Server, WorkerFactory
from tests.support.videos import heights


async def test_sdk_request_and_every_field_read(
    server: Server, start_worker: WorkerFactory, hd_video_bytes: bytes
) -> None:
    await start_worker(tasks=("hls_streaming",))
    response = await server.client.post(
        "/jobs/hls_streaming",
        data={"include_original": "true", "priority": "5"},
        files={"file": ("video_1080p_10s.mp4", hd_video_bytes, "video/mp4")},
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["status"] == "queued" and reply["task_type"] == "hls_streaming"
    job_id = reply["job_id"]
    first = await server.job(job_id)  # http_submit_job reads the job right away
    assert first["job_id"] == job_id and first["task_type"] == "hls_streaming"

    job = await server.wait_status(job_id, "completed", timeout=60)
    assert job["progress"] == 100 and job["priority"] == 5 and job["error_message"] is None
    output = job["task_output"]
    assert output["master_playlist"] == "output/adaptive.m3u8"
    assert output["variants_generated"] == 2 and output["include_original"] is True
    assert [(v["resolution"], v["bitrate"]) for v in output["variants"]] == [(720, 3500), (480, 1500)]
    assert output["total_segments"] == 2 and output["duration_seconds"] == 2.0

    master = await server.client.get(f"/jobs/{job_id}/files/{output['master_playlist']}")
    assert master.status_code == 200 and master.text.startswith("#EXTM3U")
    assert "RESOLUTION=1280x720" in master.text and "RESOLUTION=854x480" in master.text
    folder = server.settings.storage_dir / "jobs" / job_id
    for variant in output["variants"]:
        assert heights(folder / variant["playlist"]) == [variant["resolution"]]
    assert heights(folder / "output" / "adaptive-orig.m3u8") == [720]

    assert (await server.client.delete(f"/jobs/{job_id}")).status_code in (200, 204)
    assert (await server.client.get(f"/jobs/{job_id}")).status_code == 404
