"""Convert an image to another format with Pillow."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from compute.plugins.media import decode, icc_profile

#: Format names clients send -> Pillow's format names.
PIL_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
}
#: Formats that cannot store an alpha channel.
NO_ALPHA = {"jpg", "jpeg", "bmp"}


def extension(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def convert(source: Path, target: Path, fmt: str, quality: int) -> None:
    """Write `source` to `target` in `fmt`; `quality` applies to JPEG and WebP.

    The picture is written upright, in RGB (RGBA when it has transparency and `fmt` can store
    it), with its ICC profile when that still describes it. A PNG from a JPEG (a photo) is
    compressed with zlib's run-length strategy after PNG's per-row filters: five times faster
    than the default level (6) for a tenth more bytes, where `optimize` (level 9) would be
    twenty times slower; any other source gets the default level (INTERNALS.md, Plugins).
    """
    decoded = decode(source, "RGB", keep_alpha=fmt not in NO_ALPHA)
    img = decoded.image
    options: dict[str, Any] = {"icc_profile": icc_profile(img)}
    if fmt in ("jpg", "jpeg", "webp"):
        options["quality"] = quality
    if fmt == "png" and decoded.jpeg:
        options["compress_type"] = zlib.Z_RLE
    img.save(target, format=PIL_FORMATS[fmt], **options)
