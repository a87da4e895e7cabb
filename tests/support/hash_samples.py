"""Test media for the hash plugin: structured pictures (perceptual hashes need something to see)."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image


def blocks(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A picture of random grey-level blocks: two seeds give visibly different pictures."""
    rng = random.Random(seed)
    small = Image.frombytes("RGB", (8, 6), rng.randbytes(8 * 6 * 3))
    return small.resize(size, Image.Resampling.BICUBIC)


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


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
