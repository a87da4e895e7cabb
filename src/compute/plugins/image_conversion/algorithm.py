"""Convert an image to another format with Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compute.plugins.media import open_image

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
    """Write `source` to `target` in `fmt`; `quality` applies to JPEG and WebP."""
    img = open_image(source, mode="RGB" if fmt in NO_ALPHA else "RGBA")
    options: dict[str, Any] = {}
    if fmt in ("jpg", "jpeg", "webp"):
        options["quality"] = quality
    if fmt == "png":
        options["optimize"] = True
    img.save(target, format=PIL_FORMATS[fmt], **options)
