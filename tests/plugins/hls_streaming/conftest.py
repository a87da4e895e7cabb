"""Test videos for hls_streaming, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.videos import make_video


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


@pytest.fixture(scope="session")
def small_video_bytes(small_video: Path) -> bytes:
    return small_video.read_bytes()


@pytest.fixture(scope="session")
def hd_video_bytes(hd_video: Path) -> bytes:
    return hd_video.read_bytes()
