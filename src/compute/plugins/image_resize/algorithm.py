"""Resize an image with Pillow (LANCZOS), keeping its format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from compute.plugins.media import check_pixels, decode, icc_profile

#: Stored-upload extensions (media.MediaKind.extension) -> Pillow's format names.
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
#: Formats that cannot store an alpha channel.
NO_ALPHA = {"jpg", "bmp"}
#: Lossy formats get a quality close to the source's, since the resize already loses detail.
LOSSY_QUALITY = 90
#: A JPEG is decoded reduced by libjpeg (1/2 to 1/8 per side) only to no less than this many
#: times the output: LANCZOS then gives what it gives from the full picture, within 50 dB PSNR
#: (INTERNALS.md, Plugins).
DRAFT_GAP = 2


def target_size(
    source: tuple[int, int], width: int, height: int, maintain_aspect_ratio: bool
) -> tuple[int, int]:
    """The output size: exactly `width` x `height`, or the source scaled (up or down) to fit inside it.

    When fitting, the side that limits the scale gets its requested length exactly and the
    other is rounded, never below one pixel.
    """
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if not maintain_aspect_ratio:
        return width, height
    src_w, src_h = source
    if src_w * height <= src_h * width:  # height limits: width / src_w >= height / src_h
        return max(1, min(width, round(src_w * height / src_h))), height
    return width, max(1, min(height, round(src_h * width / src_w)))


def resize(
    source: Path,
    target: Path,
    width: int,
    height: int,
    maintain_aspect_ratio: bool,
    on_decoded: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Write `source` resized to `target` (format from the target's extension); return the size written.

    The image is turned upright first (EXIF orientation), so "fit inside" applies to what a
    viewer sees. Multi-frame images (GIF, WebP, TIFF) keep their first frame only. RGBA only
    when the picture has transparency and the format stores it.
    """
    check_pixels(width, height, "requested output")
    ext = target.suffix.lstrip(".").lower()

    def needs(size: tuple[int, int]) -> tuple[int, int]:
        w, h = target_size(size, width, height, maintain_aspect_ratio)
        return w * DRAFT_GAP, h * DRAFT_GAP

    decoded = decode(source, "RGB", keep_alpha=ext not in NO_ALPHA, needs=needs)
    if on_decoded is not None:
        on_decoded()
    size = target_size(decoded.size, width, height, maintain_aspect_ratio)
    resized = decoded.resized(size)
    options: dict[str, Any] = {"icc_profile": icc_profile(resized)}
    if ext in ("jpg", "webp"):
        options["quality"] = LOSSY_QUALITY
    resized.save(target, format=PIL_FORMATS[ext], **options)
    return size
