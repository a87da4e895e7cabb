"""Video limits (MAX_VIDEO_PIXELS, MAX_VIDEO_SECONDS, MAX_VIDEO_STREAMS): refused at submit with 413
by the tasks that decode frames, and by the worker before it decodes (issue 16 item 5: a 301 KB
10240x10240 video was accepted and ffmpeg took 1.19 GB).

The limits are lowered below a small test video instead of making a huge one: the check is the
same, and the test does not need the memory it guards against."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.plugins import environment
from compute.plugins.hls_streaming.algorithm import make_hls
from compute.plugins.hls_streaming.ladder import Variant
from compute.plugins.media_thumbnail.algorithm import Box, video_thumbnail
from compute.plugins.video_probe import VideoInfo, VideoTooLarge, check, parse_probe
from tests.support.inprocess import Server
from tests.support.jobs import jobs_left, post_job
from tests.support.videos import make_video, opened

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

#: (the limit lowered, what the refusal names); the test video is 320x240, 2 s, video + audio.
PAST = {
    "pixels": (
        {"max_video_pixels": 320 * 240 - 1},
        "video frames of 320x240 = 76800 pixels exceed the limit of 76799",
    ),
    "seconds": ({"max_video_seconds": 1}, "longer than the limit of 1 s (MAX_VIDEO_SECONDS)"),
    "streams": ({"max_video_streams": 1}, "more than 1 streams (MAX_VIDEO_STREAMS)"),
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4", (320, 240), 2.0)


@pytest.fixture(scope="module")
def clip_bytes(clip: Path) -> bytes:
    return clip.read_bytes()


def segments(folder: Path) -> list[Path]:
    return list(folder.glob("*.ts"))


@pytest.fixture
def limits(settings: Any) -> Iterator[Any]:
    """limits(**changes): the video limits of this process (server and in-process plugins) lowered."""
    previous = environment.current()

    def lower(**changes: Any) -> None:
        environment.replace_current(dataclasses.replace(previous, **changes))

    yield lower
    environment.replace_current(previous)


@pytest.mark.parametrize("task", ["media_thumbnail", "hls_streaming"])
@pytest.mark.parametrize("past", sorted(PAST))
async def test_a_video_past_a_limit_is_413(
    server: Server, clip_bytes: bytes, limits: Any, task: str, past: str
) -> None:
    changes, reason = PAST[past]
    limits(**changes)
    status, text = await post_job(server, task, clip_bytes, filename="clip.mp4")
    assert status == 413, text
    assert reason in json.loads(text)["detail"]
    assert jobs_left(server) == []


async def test_a_video_on_disk_past_a_limit_is_413(
    server: Server, clip: Path, limits: Any, media_root: Path
) -> None:
    shutil.copy(clip, media_root / "clip.mp4")
    limits(max_video_pixels=1000)
    response = await server.client.post(
        "/jobs/hls_streaming", data={"priority": "5", "input_absolute_path": str(media_root / "clip.mp4")}
    )
    assert response.status_code == 413 and "MAX_VIDEO_PIXELS" in response.json()["detail"]
    assert jobs_left(server) == []


@pytest.mark.parametrize("task", ["exif", "hash"])
async def test_tasks_that_do_not_decode_frames_take_any_video(
    server: Server, clip_bytes: bytes, limits: Any, task: str
) -> None:
    limits(max_video_pixels=1000, max_video_seconds=1, max_video_streams=1)
    status, text = await post_job(server, task, clip_bytes, filename="clip.mp4")
    assert status == 200, text


async def test_within_the_limits_is_accepted(server: Server, clip_bytes: bytes, limits: Any) -> None:
    limits(max_video_pixels=320 * 240, max_video_seconds=3, max_video_streams=2)
    status, text = await post_job(server, "media_thumbnail", clip_bytes, filename="clip.mp4")
    assert status == 200, text


async def test_the_worker_refuses_frames_past_the_limit(
    plugin_env: environment.PluginEnvironment, clip: Path, limits: Any, tmp_path: Path
) -> None:
    """However a file got to the worker, its frames past the limit are not decoded."""
    limits(max_video_pixels=320 * 240 - 1)
    with pytest.raises(VideoTooLarge, match="video frames of 320x240"):
        await video_thumbnail(clip, tmp_path / "sheet.jpg", Box(256, 256), hide=[tmp_path])
    assert not (tmp_path / "sheet.jpg").exists()
    with pytest.raises(VideoTooLarge, match="video frames of 320x240"), opened(clip) as source:
        await make_hls(source, tmp_path, [Variant(160, 250)], True, lambda _: None)
    assert not segments(tmp_path)


async def test_the_worker_refuses_a_video_too_long(
    plugin_env: environment.PluginEnvironment, clip: Path, limits: Any, tmp_path: Path
) -> None:
    limits(max_video_seconds=1)
    with pytest.raises(VideoTooLarge, match="MAX_VIDEO_SECONDS"), opened(clip) as source:
        await make_hls(source, tmp_path, [Variant(160, 250)], True, lambda _: None)


def test_what_the_probe_reports(plugin_env: environment.PluginEnvironment) -> None:
    report = {
        "format": {"duration": "7.5", "nb_streams": 3},
        "streams": [
            {"index": 0, "codec_type": "video", "width": 640, "height": 360},
            {"codec_type": "audio"},
        ],
    }
    assert parse_probe(report) == VideoInfo(0, 640, 360, True, 7.5, 3)
    for duration in ("inf", "nan", "-3", "N/A"):
        unknown = {**report, "format": {"duration": duration}}
        assert parse_probe(unknown).duration == 0.0 and parse_probe(unknown).streams == 2
    check(VideoInfo(0, 7680, 4320, True, 4 * 3600, 64))  # the defaults' edge is accepted
    with pytest.raises(VideoTooLarge, match="MAX_VIDEO_PIXELS"):
        check(VideoInfo(0, 10240, 10240, False, 1.0, 1))
