"""POST /jobs/media_thumbnail through a real worker: an image and a video, each as a JPEG thumbnail."""

from __future__ import annotations

import io

from PIL import Image

from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(buf, format="JPEG")
    return buf.getvalue()


async def test_image_and_video_through_a_worker(
    server: Server, start_worker: WorkerFactory, sheet_video_bytes: bytes
) -> None:
    await start_worker(tasks=("media_thumbnail",))

    image = await run_job(
        server, "media_thumbnail", jpeg_bytes((600, 300)), "beach.jpg", {"width": "120", "height": "120"}
    )
    assert image["params"]["input_path"] == "input/upload.jpg"
    assert image["params"]["output_path"] == "output/thumbnail.jpg"
    assert image["task_output"] == {
        "thumbnail_path": "output/thumbnail.jpg",
        "media_type": "image",
        "width": 120,
        "height": 60,
    }
    with Image.open(io.BytesIO(await download(server, image["job_id"], "output/thumbnail.jpg"))) as out:
        assert (out.format, out.size) == ("JPEG", (120, 60))

    # A video sent under a misleading name: the bytes decide it is a video.
    video = await run_job(
        server,
        "media_thumbnail",
        sheet_video_bytes,
        "clip.png",
        {"width": "128", "height": "128", "maintain_aspect_ratio": "false"},
    )
    assert video["params"]["input_path"] == "input/upload.mp4"
    assert video["params"]["maintain_aspect_ratio"] is False
    assert video["task_output"] == {
        "thumbnail_path": "output/thumbnail.jpg",
        "media_type": "video",
        "width": 128,
        "height": 128,
    }
    with Image.open(io.BytesIO(await download(server, video["job_id"], "output/thumbnail.jpg"))) as out:
        assert (out.format, out.size) == ("JPEG", (128, 128))
