"""Test videos, made once per session (ffmpeg takes a fraction of a second for each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.videos import make_video


@pytest.fixture(scope="session")
def sheet_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320x240, 3 s, a keyframe every 5 frames: 18 keyframes, enough for a full 4x4 sheet."""
    return make_video(tmp_path_factory.mktemp("videos") / "sheet.mp4", (320, 240), 3.0, keyframe_every=5)


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320x240, 2 s, one keyframe a second: 2 keyframes, most of the sheet stays empty."""
    return make_video(tmp_path_factory.mktemp("videos") / "short.mp4", (320, 240), 2.0, keyframe_every=30)


@pytest.fixture(scope="session")
def sheet_video_bytes(sheet_video: Path) -> bytes:
    return sheet_video.read_bytes()
