"""Thumbnails: images resized with Pillow, videos as a contact sheet of keyframes made by ffmpeg."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.media import decode, icc_profile
from compute.plugins.video_probe import limit_options, too_large

#: Box side when the client gives none (CL Server's default).
DEFAULT_SIZE = 256
#: The video sheet is GRID x GRID keyframes (as upstream: `tile=4x4`).
GRID = 4
#: ffmpeg reads the whole file to find keyframes; a long video takes a while.
FFMPEG_TIMEOUT = 300.0
JPEG_QUALITY = 90
#: A JPEG is decoded reduced to no less than this many times the thumbnail's size, leaving the
#: final LANCZOS resize pixels to filter (Pillow's own thumbnail() leaves the same 2).
DRAFT_GAP = 2
#: ffmpeg's JPEG quality scale: 2 is near the best, 31 the worst.
FFMPEG_JPEG_QUALITY = "2"


class NoVideoFrame(ComputeError):
    """ffmpeg decoded no video frame from the file."""


@dataclass(frozen=True)
class Box:
    """Where the thumbnail must fit."""

    width: int
    height: int
    #: True: fit inside the box keeping the aspect ratio, never enlarging; False: exactly the box.
    keep_aspect: bool = True


def fitted(size: tuple[int, int], box: Box) -> tuple[int, int]:
    """The thumbnail size for a picture of `size`."""
    if not box.keep_aspect:
        return box.width, box.height
    width, height = size
    scale = min(box.width / width, box.height / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_thumbnail(source: Path, target: Path, box: Box) -> Path:
    """Write the thumbnail of image `source` to `target` (JPEG), or beside it as PNG when the
    image has transparent pixels (JPEG would paint them black); return the file written.

    A JPEG is decoded reduced by libjpeg (1/2 to 1/8 per side) to no less than DRAFT_GAP times
    the thumbnail, so a 12 MP photo never exists at full size here; LANCZOS does the rest.
    """
    decoded = decode(source, "RGB", keep_alpha=True, needs=lambda size: _gapped(fitted(size, box)))
    img = decoded.image
    size = fitted(decoded.size, box)
    # Only an image with an alpha channel (or a transparent colour) is scanned for see-through pixels.
    transparent = img.mode == "RGBA" and img.getchannel("A").getextrema()[0] != 255
    thumb = decoded.resized(size, reducing_gap=3.0)
    if transparent:
        target = target.with_suffix(".png")
        thumb.save(target, format="PNG", icc_profile=icc_profile(thumb))
    else:
        thumb = thumb.convert("RGB") if thumb.mode != "RGB" else thumb
        thumb.save(target, format="JPEG", quality=JPEG_QUALITY, icc_profile=icc_profile(thumb))
    return target


def _gapped(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] * DRAFT_GAP, size[1] * DRAFT_GAP


def _fit_filter(width: int, height: int) -> str:
    # Quoted: the commas inside min() would otherwise split the filter chain.
    return f"scale=w='min(iw,{width})':h='min(ih,{height})':force_original_aspect_ratio=decrease"


def sheet_filters(box: Box) -> str:
    """ffmpeg filters for the keyframe sheet. Each frame is shrunk to its cell before tiling, so
    a 4K video never builds a 16-frame 4K canvas; the sheet is then brought to the box."""
    cell_w, cell_h = max(1, box.width // GRID), max(1, box.height // GRID)
    if box.keep_aspect:
        cell, whole = _fit_filter(cell_w, cell_h), _fit_filter(box.width, box.height)
    else:
        cell, whole = f"scale={cell_w}:{cell_h}", f"scale={box.width}:{box.height}"
    return f"{cell},tile={GRID}x{GRID},{whole}"


def frame_filters(box: Box) -> str:
    """ffmpeg filters for a single frame brought to the box."""
    return _fit_filter(box.width, box.height) if box.keep_aspect else f"scale={box.width}:{box.height}"


def _ffmpeg(source: Path, target: Path, filters: str, keyframes_only: bool) -> list[str]:
    skip = ["-skip_frame", "nokey"] if keyframes_only else []
    return [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        *skip,
        *limit_options(),  # frames and stream counts past the video limits are not decoded
        "-i",
        str(source),
        "-map",
        "0:v:0",
        "-frames:v",
        "1",
        "-q:v",
        FFMPEG_JPEG_QUALITY,
        "-vf",
        filters,
        str(target),
    ]


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


async def video_thumbnail(source: Path, target: Path, box: Box, hide: Sequence[Path] = ()) -> Path:
    """Write a GRID x GRID sheet of the video's first keyframes to `target` (JPEG).

    A video with fewer keyframes gets a partly filled sheet. One where ffmpeg finds no keyframe
    at all (a recording cut from an intra-refresh stream has none) gets its first decodable
    frame instead. When that fails too, ToolFailed carries ffmpeg's own reason.
    """
    # A leftover from an earlier attempt must not pass for this run's output.
    target.unlink(missing_ok=True)  # noqa: ASYNC240 (local disk, one call)
    try:
        await tools.run(
            _ffmpeg(source, target, sheet_filters(box), keyframes_only=True),
            timeout=FFMPEG_TIMEOUT,
            hide=hide,
        )
    except tools.ToolFailed as exc:
        limit = too_large(exc)
        if limit is not None:
            raise limit from None
        # Else no keyframe was decoded ("Cannot determine format ... after EOF"): try every frame.
    if not _written(target):
        try:
            await tools.run(
                _ffmpeg(source, target, frame_filters(box), keyframes_only=False),
                timeout=FFMPEG_TIMEOUT,
                hide=hide,
            )
        except tools.ToolFailed as exc:
            raise too_large(exc) or exc from None
    if not _written(target):
        raise NoVideoFrame()
    return target


def picture_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size
