"""POST /jobs/hls_streaming through a real worker: an upload, and a video named by its path on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job
from tests.support.videos import heights

LADDER = json.dumps([{"resolution": 160, "bitrate": 250}, {"resolution": 240, "bitrate": 500}])


async def test_upload_with_a_custom_ladder(
    server: Server, start_worker: WorkerFactory, small_video_bytes: bytes
) -> None:
    await start_worker(tasks=("hls_streaming",))
    job = await run_job(
        server,
        "hls_streaming",
        small_video_bytes,
        "holiday.mp4",
        {"variants": LADDER, "include_original": "false"},
    )
    assert job["params"]["input_path"] == "input/upload.mp4" and job["params"]["output_path"] == "output"
    assert job["params"]["variants"] == [
        {"resolution": 240, "bitrate": 500},
        {"resolution": 160, "bitrate": 250},
    ]
    assert job["params"]["include_original"] is False
    assert "preset" not in job["params"]  # the default: params as CL Server's SDK knows them
    assert job["task_output"] == {
        "master_playlist": "output/adaptive.m3u8",
        "variants_generated": 2,
        "variants": [
            {"resolution": 240, "bitrate": 500, "playlist": "output/adaptive-240p-500.m3u8"},
            {"resolution": 160, "bitrate": 250, "playlist": "output/adaptive-160p-250.m3u8"},
        ],
        "total_segments": 4,
        "include_original": False,
        "duration_seconds": 3.0,
    }
    master = (await download(server, job["job_id"], "output/adaptive.m3u8")).decode()
    assert master.startswith("#EXTM3U") and "adaptive-240p-500.m3u8" in master
    segment = await download(server, job["job_id"], "output/adaptive-160p-250-000.ts")
    assert segment[:1] == b"\x47"  # MPEG-TS sync byte


async def test_video_on_disk_to_a_folder_on_disk(
    server: Server, start_worker: WorkerFactory, silent_video: Path, media_root: Path
) -> None:
    source = media_root / "camera" / "clip.mp4"
    source.parent.mkdir()
    shutil.copy(silent_video, source)
    target = media_root / "streams" / "clip"  # not there yet: the worker makes it
    await start_worker(tasks=("hls_streaming",))

    response = await server.client.post(
        "/jobs/hls_streaming",
        data={
            "priority": "5",
            "input_absolute_path": str(source),
            "output_absolute_path": str(target),
            "include_original": "true",
            "variants": '[{"resolution": 240, "bitrate": 400}]',
        },
    )
    assert response.status_code == 200, response.text
    job = await server.wait_status(response.json()["job_id"], "completed", timeout=30)

    assert job["params"]["input_absolute_path"] == str(source.resolve())
    assert job["params"]["output_absolute_path"] == str(target.resolve())
    output = job["task_output"]
    assert output["master_playlist"] == "adaptive.m3u8" and output["include_original"] is True
    assert output["variants"] == [{"resolution": 240, "bitrate": 400, "playlist": "adaptive-240p-400.m3u8"}]
    assert heights(target / "adaptive.m3u8") == [240]
    assert (target / "adaptive-orig.m3u8").is_file()
    # Nothing went to the job's own folder but the job's bookkeeping.
    job_output = server.settings.storage_dir / "jobs" / job["job_id"] / "output"
    assert not list(job_output.glob("*.m3u8"))


async def test_a_faster_preset(server: Server, start_worker: WorkerFactory, small_video_bytes: bytes) -> None:
    await start_worker(tasks=("hls_streaming",))
    job = await run_job(
        server, "hls_streaming", small_video_bytes, "clip.mp4", {"variants": LADDER, "preset": "ultrafast"}
    )
    assert job["params"]["preset"] == "ultrafast" and job["task_output"]["variants_generated"] == 2
    response = await server.client.post(
        "/jobs/hls_streaming",
        data={"priority": "5", "preset": "placebo"},
        files={"file": ("clip.mp4", small_video_bytes, "video/mp4")},
    )
    assert response.status_code == 422 and "veryfast, superfast, ultrafast" in response.json()["detail"]
