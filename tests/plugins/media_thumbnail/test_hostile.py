"""What media_thumbnail refuses at the door (415, 413, 422, no job folder left)."""

from __future__ import annotations

import json

import pytest

from tests.support.images import png_bytes, png_header_only
from tests.support.inprocess import Server
from tests.support.jobs import jobs_left, post_job
from tests.support.videos import CORRUPT_MP4


async def post(server: Server, content: bytes, data: dict[str, str] | None = None) -> tuple[int, str]:
    return await post_job(server, "media_thumbnail", content, data, filename="x.mp4")


async def test_not_media_is_415(server: Server) -> None:
    status, text = await post(server, b"%PDF-1.7 not a picture" * 10)
    assert status == 415 and "unrecognised format" in text and "video/mp4" in text and "image/png" in text
    assert jobs_left(server) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_pixel_bomb_upload_is_413(server: Server) -> None:
    # 144 Mpx: over MAX_IMAGE_PIXELS (100 M by default), under Pillow's own bomb error (2 x the limit).
    status, text = await post(server, png_header_only(12_000, 12_000))
    assert status == 413 and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


async def test_giant_pixel_bomb_is_refused(server: Server) -> None:
    # Over twice the limit Pillow itself refuses to open it (DecompressionBombError): still a 413.
    status, text = await post(server, png_header_only(30_000, 30_000))
    assert status == 413 and "900000000 pixels" in text
    assert jobs_left(server) == []


async def test_box_over_the_pixel_limit_is_413(server: Server) -> None:
    status, text = await post(server, png_bytes(), {"width": "20000", "height": "20000"})
    assert status == 413 and "thumbnail of 20000x20000" in text and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


@pytest.mark.parametrize(
    "data",
    [
        {"width": "0"},
        {"height": "-5"},
        {"width": "wide"},
        {"maintain_aspect_ratio": "maybe"},
        {"priority": "11"},
    ],
    ids=["zero", "negative", "not-a-number", "bad-bool", "bad-priority"],
)
async def test_bad_fields_are_422(server: Server, data: dict[str, str]) -> None:
    status, _ = await post(server, png_bytes(), data)
    assert status == 422
    assert jobs_left(server) == []


async def test_corrupt_video_is_422_with_ffprobes_reason(server: Server) -> None:
    """The header says MP4; ffprobe finds the damage at submit, before a job exists."""
    status, text = await post(server, CORRUPT_MP4)
    reason = json.loads(text)["detail"]
    assert status == 422 and "the video cannot be read" in reason and "moov atom not found" in reason
    assert "input/upload.mp4" in reason
    assert str(server.settings.storage_dir) not in reason and "/jobs/" not in reason
    assert jobs_left(server) == []
