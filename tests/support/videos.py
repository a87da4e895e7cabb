"""Short test videos made by ffmpeg from its own test sources (testsrc picture, sine tone), and
an ffprobe look at what a plugin wrote."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from compute.plugins.video_probe import Source

TS_PACKET = 188


def make_video(
    path: Path,
    size: tuple[int, int] = (320, 240),
    seconds: float = 2.0,
    *,
    audio: bool = True,
    keyframe_every: int | None = None,
    rate: int = 30,
) -> Path:
    """An H.264 (+ AAC) video in the container `path`'s suffix names; `keyframe_every` frames."""
    args = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size={size[0]}x{size[1]}:rate={rate}",
    ]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    args += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if keyframe_every:
        args += ["-g", str(keyframe_every), "-keyint_min", str(keyframe_every), "-sc_threshold", "0"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    subprocess.run([*args, str(path)], check=True, capture_output=True, timeout=60)
    return path


def without_keyframes(path: Path, size: tuple[int, int] = (320, 240), seconds: float = 3.0) -> Path:
    """An MPEG-TS cut out of an intra-refresh stream: decodable, yet no frame is a keyframe
    (as a recording joined mid-broadcast is). Parameter sets ride on every packet."""
    whole = path.with_name("whole.ts")
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={size[0]}x{size[1]}:rate=30",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-flags",
            "+global_header",
            "-x264-params",
            "intra-refresh=1:keyint=30",
            "-bsf:v",
            "dump_extra=freq=all",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
            str(whole),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    data = whole.read_bytes()
    packets = len(data) // TS_PACKET
    path.write_bytes(data[TS_PACKET * (packets // 3) :])  # drop the one IDR frame at the start
    whole.unlink()
    return path


#: An MP4 header followed by garbage: sniffs as video/mp4, ffmpeg cannot read it.
CORRUPT_MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(range(256)) * 40


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
    return cast(dict[str, Any], json.loads(out))


def heights(path: Path) -> list[int]:
    return [s["height"] for s in ffprobe(path)["streams"] if s["codec_type"] == "video"]


def codecs(path: Path) -> set[str]:
    return {s["codec_name"] for s in ffprobe(path)["streams"]}


@contextlib.contextmanager
def opened(path: Path, shown: str | None = None) -> Iterator[Source]:
    """`path` open, as make_hls takes a video; `shown`: its name in messages (default: the path)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield Source(fd, shown or str(path))
    finally:
        os.close(fd)


def tiny_mp4(folder: Path) -> bytes:
    """One second of ffmpeg's test pattern; skips the test where ffmpeg is not installed."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    target = folder / "tiny.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10",
            "-t",
            "1",
            "-c:v",
            "mpeg4",
            str(target),
        ],
        check=True,
        timeout=30,
    )
    return target.read_bytes()
