"""What hls_streaming refuses at the door (400/403/404/415/422, no job folder left behind) and
what fails as a job (a corrupt video, with ffmpeg's reason and no server path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from compute.errors import ComputeError
from compute.plugins import media_paths
from compute.plugins.environment import PluginEnvironment
from tests.support.images import png_bytes
from tests.support.inprocess import Server
from tests.support.jobs import jobs_left
from tests.support.videos import CORRUPT_MP4


async def post(server: Server, data: dict[str, str], content: bytes | None = None) -> tuple[int, str]:
    files = {"file": ("video.mp4", content, "video/mp4")} if content is not None else None
    response = await server.client.post("/jobs/hls_streaming", data={"priority": "5", **data}, files=files)
    return response.status_code, response.json()["detail"] if response.status_code != 200 else response.text


async def test_an_image_is_415(server: Server) -> None:
    status, reason = await post(server, {}, png_bytes())
    assert status == 415 and "image/png" in reason and "video/mp4" in reason
    assert jobs_left(server) == []


async def test_neither_or_both_inputs_is_400(server: Server, media_root: Path, small_video: Path) -> None:
    status, reason = await post(server, {"include_original": "true"})
    assert status == 400 and "exactly one" in reason
    inside = media_root / "clip.mp4"
    shutil.copy(small_video, inside)
    status, reason = await post(server, {"input_absolute_path": str(inside)}, b"\x00\x00\x00\x18ftypisom")
    assert status == 400 and "exactly one" in reason
    assert jobs_left(server) == []


@pytest.mark.parametrize("variants", ["720p please", '[{"resolution": 719, "bitrate": 3500}]', "[]"])
async def test_bad_variants_are_422_with_the_reason(server: Server, variants: str) -> None:
    status, reason = await post(server, {"variants": variants}, CORRUPT_MP4)
    assert status == 422 and "variants" in reason
    assert jobs_left(server) == []


async def test_paths_outside_the_media_roots_are_403(
    server: Server, media_root: Path, tmp_path: Path, small_video: Path
) -> None:
    outside = tmp_path / "private" / "secret.mp4"
    outside.parent.mkdir()
    shutil.copy(small_video, outside)
    link = media_root / "innocent.mp4"
    link.symlink_to(outside)  # inside the root by name, outside once resolved
    inside = media_root / "fine.mp4"
    shutil.copy(small_video, inside)

    for data in (
        {"input_absolute_path": str(outside)},
        {"input_absolute_path": str(link)},
        {"input_absolute_path": f"{media_root}/../private/secret.mp4"},
        {"input_absolute_path": str(inside), "output_absolute_path": str(tmp_path / "out")},
    ):
        status, reason = await post(server, data)
        assert status == 403 and "COMPUTE_MEDIA_ROOTS" in reason, data
        assert str(outside) not in reason
    assert jobs_left(server) == []


async def test_missing_relative_or_unfit_paths(server: Server, media_root: Path, small_video: Path) -> None:
    status, reason = await post(server, {"input_absolute_path": str(media_root / "nothing.mp4")})
    assert status == 404 and "no file" in reason
    status, reason = await post(server, {"input_absolute_path": "videos/clip.mp4"})
    assert status == 400 and "absolute" in reason
    picture = media_root / "photo.mp4"
    picture.write_bytes(png_bytes())
    status, reason = await post(server, {"input_absolute_path": str(picture)})
    assert status == 415 and "image/png" in reason
    clip = media_root / "clip.mp4"
    shutil.copy(small_video, clip)
    status, reason = await post(server, {"input_absolute_path": str(clip), "output_absolute_path": str(clip)})
    assert status == 400 and "not a folder" in reason
    assert jobs_left(server) == []


def test_the_worker_checks_the_roots_again(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    [root] = plugin_env.media_roots
    (root / "a").mkdir()
    (root / "a" / "b.mp4").write_bytes(b"video")
    with media_paths.open_file(str(root / "a" / "b.mp4"), "input_absolute_path") as found:
        assert found.path == root / "a" / "b.mp4" and os.read(found.fd, 5) == b"video"
    with pytest.raises(ComputeError, match="input_absolute_path is outside the media roots"):
        media_paths.open_file(str(tmp_path / "elsewhere.mp4"), "input_absolute_path")


async def test_corrupt_video_is_422_with_ffprobes_reason(server: Server, media_root: Path) -> None:
    """The header says MP4; ffprobe finds the damage at submit, before a job exists."""
    status, reason = await post(server, {}, CORRUPT_MP4)
    assert status == 422 and "the video cannot be read" in reason and "moov atom not found" in reason
    assert "input/upload.mp4" in reason
    assert str(server.settings.storage_dir) not in reason and "/jobs/" not in reason
    on_disk = media_root / "broken.mp4"
    on_disk.write_bytes(CORRUPT_MP4)
    status, reason = await post(server, {"input_absolute_path": str(on_disk)})
    assert status == 422 and "moov atom not found" in reason and str(media_root) not in reason
    assert jobs_left(server) == []
