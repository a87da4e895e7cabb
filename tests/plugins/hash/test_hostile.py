"""What hash refuses at the door (415, 413, 422, leaving no job folder) and what fails as a job."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from tests.support.hash_samples import encoded
from tests.support.images import png_header_only
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import jobs_left, post_job


async def post(server: Server, content: bytes, data: dict[str, str] | None = None) -> tuple[int, str]:
    return await post_job(server, "hash", content, data)


async def test_unknown_file_is_415(server: Server) -> None:
    status, text = await post(server, b"#!/bin/sh\necho this is a script\n" * 4)
    assert status == 415 and "unrecognised format" in text and "video/mp4" in text
    assert jobs_left(server) == []


async def test_unknown_algorithm_is_422(server: Server) -> None:
    status, _ = await post(server, encoded(Image.new("RGB", (8, 8)), "PNG"), {"algorithm": "sha1"})
    assert status == 422
    assert jobs_left(server) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_pixel_bomb_is_413(server: Server) -> None:
    status, text = await post(server, png_header_only(12_000, 12_000))
    assert status == 413 and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


async def test_truncated_image_fails_without_paths(server: Server, start_worker: WorkerFactory) -> None:
    noise = Image.frombytes("RGB", (128, 128), random.Random(1).randbytes(128 * 128 * 3))
    status, text = await post(server, encoded(noise, "PNG")[:2000])
    assert status == 200, text  # the header is sound: only decoding finds the damage
    await start_worker(tasks=("hash",), wait_idle=False)
    job = await server.wait_status(json.loads(text)["job_id"], "failed", timeout=30)
    message = job["error_message"]
    assert "not a decodable image" in message or "corrupt image" in message
    assert str(server.settings.storage_dir) not in message and "/jobs/" not in message
