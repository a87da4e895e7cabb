"""POST /jobs/exif through a real worker: the EXIF Pillow wrote comes back, server details do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compute.plugins.exif.algorithm import HIDDEN_TAGS, SUMMARY
from tests.support.exif_samples import needs_exiftool, photo
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job
from tests.support.videos import tiny_mp4

pytestmark = needs_exiftool


async def test_photo_video_and_selected_tags(
    server: Server, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    await start_worker(tasks=("exif",))

    job = await run_job(server, "exif", photo(), "IMG_0001.JPG")
    output = job["task_output"]
    assert job["params"]["tags"] == [] and job["params"]["output_path"] == "output/exif.json"
    assert (output["Make"], output["Model"], output["DateTime"]) == ("Canon", "EOS 5D", "2024:01:02 03:04:05")
    assert output["DateTimeOriginal"] == "2023:05:06 07:08:09" and output["ISO"] == 200
    assert output["gps_latitude"] == pytest.approx(-33.86)
    assert output["gps_longitude"] == pytest.approx(151.21)
    assert not HIDDEN_TAGS & set(output)
    assert str(server.settings.storage_dir) not in json.dumps(output)
    assert json.loads(await download(server, job["job_id"], "output/exif.json")) == output

    some = await run_job(server, "exif", photo(), "a.jpg", {"tags": " Make , GPSLatitude,,"})
    assert some["params"]["tags"] == ["Make", "GPSLatitude"]
    assert set(some["task_output"]) - set(SUMMARY) == {"Make", "GPSLatitude"}

    video = (await run_job(server, "exif", tiny_mp4(tmp_path), "clip.mp4"))["task_output"]
    assert video["MIMEType"] == "video/mp4" and video["image_width"] == 64 and video["image_height"] == 48
    assert not HIDDEN_TAGS & set(video) and str(server.settings.storage_dir) not in json.dumps(video)
