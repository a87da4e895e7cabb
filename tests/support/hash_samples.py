"""Test media for the hash plugin: structured pictures (perceptual hashes need something to see)."""

from __future__ import annotations

import io
import random

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
