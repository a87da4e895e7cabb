"""What image_resize refuses at the door (415, 413, 422, leaving no job folder) and what fails as a job."""

from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image

from tests.support.images import png_header_only
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import jobs_left, post_job


async def post(server: Server, content: bytes, data: dict[str, str]) -> tuple[int, str]:
    return await post_job(server, "image_resize", content, data, filename="x.png")


async def test_not_an_image_is_415(server: Server) -> None:
    status, text = await post(server, b"%PDF-1.7 not an image at all" * 10, {"width": "8", "height": "8"})
    assert status == 415 and "unrecognised format" in text and "image/png" in text
    assert jobs_left(server) == []


async def test_video_is_415(server: Server) -> None:
    mp4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100
    status, text = await post(server, mp4, {"width": "8", "height": "8"})
    assert status == 415 and "video/mp4" in text
    assert jobs_left(server) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_pixel_bomb_upload_is_413(server: Server) -> None:
    # 144 Mpx: over MAX_IMAGE_PIXELS (100 M by default), under Pillow's own bomb error (2 x 89 M).
    status, text = await post(server, png_header_only(12_000, 12_000), {"width": "8", "height": "8"})
    assert status == 413 and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


async def test_giant_pixel_bomb_is_413(server: Server) -> None:
    # 900 Mpx: Pillow itself refuses to open it (DecompressionBombError); still 413, not 415.
    status, text = await post(server, png_header_only(30_000, 30_000), {"width": "8", "height": "8"})
    assert status == 413 and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


async def test_requested_output_over_the_limit_is_413(server: Server) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    status, text = await post(server, buf.getvalue(), {"width": "20000", "height": "20000"})
    assert status == 413 and "requested output" in text and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


@pytest.mark.parametrize(
    "data",
    [
        {"width": "0", "height": "8"},
        {"width": "8", "height": "-1"},
        {"width": "wide", "height": "8"},
        {"width": "8"},
        {"width": "8", "height": "8", "maintain_aspect_ratio": "maybe"},
    ],
    ids=["zero", "negative", "not-a-number", "missing", "bad-bool"],
)
async def test_bad_sizes_are_422(server: Server, data: dict[str, str]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    status, _ = await post(server, buf.getvalue(), data)
    assert status == 422
    assert jobs_left(server) == []


async def test_truncated_image_fails_without_paths(server: Server, start_worker: WorkerFactory) -> None:
    noise = Image.frombytes("RGB", (128, 128), random.Random(1).randbytes(128 * 128 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    status, text = await post(server, buf.getvalue()[:2000], {"width": "8", "height": "8"})
    assert status == 200, text  # the header is sound: only decoding finds the damage
    await start_worker(tasks=("image_resize",), wait_idle=False)
    job = await server.wait_status(json.loads(text)["job_id"], "failed", timeout=30)
    message = job["error_message"]
    assert "not a decodable image" in message or "corrupt image" in message
    assert str(server.settings.storage_dir) not in message and "/jobs/" not in message
    assert job["task_output"] is None
