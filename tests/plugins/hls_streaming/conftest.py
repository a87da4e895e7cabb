"""Test videos for hls_streaming, made once per session, and an ffprobe look at what was written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.media_thumbnail.videos import make_video


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def hd_video(videos: Path) -> Path:
    """1280x720, 2 s, with a 440 Hz tone: what the default ladder (720p + 480p) is for."""
    return make_video(videos / "hd.mp4", (1280, 720), 2.0)


@pytest.fixture(scope="session")
def small_video(videos: Path) -> Path:
    """320x240, 3 s, with sound: quick to encode."""
    return make_video(videos / "small.mp4", (320, 240), 3.0)


@pytest.fixture(scope="session")
def silent_video(videos: Path) -> Path:
    """320x240, 2 s, no audio stream at all."""
    return make_video(videos / "silent.mp4", (320, 240), 2.0, audio=False)


def ffprobe(path: Path) -> dict[str, Any]:
    """Streams and format of `path` (a playlist works: ffprobe reads the segments)."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-of",
            "json",
            "-show_entries",
            "stream=codec_type,codec_name,width,height:format=duration",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def heights(path: Path) -> list[int]:
    return [s["height"] for s in ffprobe(path)["streams"] if s["codec_type"] == "video"]


def codecs(path: Path) -> set[str]:
    return {s["codec_name"] for s in ffprobe(path)["streams"]}


@pytest.fixture(scope="session")
def small_video_bytes(small_video: Path) -> bytes:
    return small_video.read_bytes()


@pytest.fixture(scope="session")
def hd_video_bytes(hd_video: Path) -> bytes:
    return hd_video.read_bytes()
