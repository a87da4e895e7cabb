"""Every container the video plugins accept is recognised by its bytes, by path and by descriptor."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compute.plugins.media import (
    AVI,
    FLV,
    MATROSKA,
    MP4,
    MPEG_PS,
    MPEG_TS,
    OGG,
    QUICKTIME,
    VIDEOS,
    sniff,
    sniff_fd,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

#: suffix -> (the kind it must sniff as, ffmpeg's codec arguments for that container)
CONTAINERS = {
    "mp4": (MP4, ["-c:v", "libx264"]),
    "mov": (QUICKTIME, ["-c:v", "libx264"]),
    "mkv": (MATROSKA, ["-c:v", "libx264"]),
    "avi": (AVI, ["-c:v", "mpeg4"]),
    "ts": (MPEG_TS, ["-c:v", "libx264"]),
    "mpg": (MPEG_PS, ["-c:v", "mpeg2video"]),
    "flv": (FLV, ["-c:v", "flv1"]),
    "ogv": (OGG, ["-c:v", "libtheora"]),
}


def test_every_accepted_container_is_listed() -> None:
    assert {kind for kind, _ in CONTAINERS.values()} == VIDEOS


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_a_video_is_known_by_its_bytes(tmp_path: Path, suffix: str) -> None:
    kind, codec = CONTAINERS[suffix]
    path = tmp_path / f"clip.{suffix}"
    source = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "1"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *source, *codec, str(path)], check=True, timeout=60)
    disguised = path.rename(tmp_path / "clip.bin")  # the name says nothing
    assert sniff(disguised) == kind
    fd = os.open(disguised, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        assert sniff_fd(fd) == kind
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7  # read where it is, the offset left alone
    finally:
        os.close(fd)
