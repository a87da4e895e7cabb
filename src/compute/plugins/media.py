"""What an uploaded file really is (magic bytes, not its name), and images opened within limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from compute.errors import ComputeError
from compute.plugins.environment import current

HEADER_BYTES = 64


@dataclass(frozen=True)
class MediaKind:
    mime: str
    #: "image" or "video"
    family: str
    #: Extension for the stored file.
    extension: str


JPEG = MediaKind("image/jpeg", "image", "jpg")
PNG = MediaKind("image/png", "image", "png")
GIF = MediaKind("image/gif", "image", "gif")
WEBP = MediaKind("image/webp", "image", "webp")
BMP = MediaKind("image/bmp", "image", "bmp")
TIFF = MediaKind("image/tiff", "image", "tiff")
HEIC = MediaKind("image/heic", "image", "heic")
MP4 = MediaKind("video/mp4", "video", "mp4")
QUICKTIME = MediaKind("video/quicktime", "video", "mov")
MATROSKA = MediaKind("video/x-matroska", "video", "mkv")
AVI = MediaKind("video/x-msvideo", "video", "avi")
MPEG_TS = MediaKind("video/mp2t", "video", "ts")
MPEG_PS = MediaKind("video/mpeg", "video", "mpg")
FLV = MediaKind("video/x-flv", "video", "flv")
OGG = MediaKind("video/ogg", "video", "ogv")

#: Images Pillow decodes: what image plugins accept.
DECODABLE_IMAGES = frozenset({JPEG, PNG, GIF, WEBP, BMP, TIFF})
#: Containers ffmpeg reads: what video plugins accept.
VIDEOS = frozenset({MP4, QUICKTIME, MATROSKA, AVI, MPEG_TS, MPEG_PS, FLV, OGG})
#: Everything exiftool reads metadata from.
WITH_METADATA = DECODABLE_IMAGES | {HEIC} | VIDEOS

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}
_QUICKTIME_BRANDS = {b"qt  "}


class ImageTooLarge(ComputeError):
    """The image has more pixels than MAX_IMAGE_PIXELS allows."""


class NotAnImage(ComputeError):
    """The file is not an image this service can decode."""


def sniff(path: Path) -> MediaKind | None:
    """The file's kind from its first bytes, or None when it is none of the kinds above."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        second_ts_sync = f.read(188 - HEADER_BYTES)[-1:] if len(head) == HEADER_BYTES else b""
    return sniff_bytes(head, second_ts_sync)


def sniff_bytes(head: bytes, ts_sync: bytes = b"") -> MediaKind | None:
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    if head[:2] == b"BM" and len(head) >= 26:
        return BMP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return HEIC
        return QUICKTIME if brand in _QUICKTIME_BRANDS else MP4
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return QUICKTIME
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return MATROSKA
    if head.startswith(b"FLV"):
        return FLV
    if head.startswith(b"OggS"):
        return OGG
    if head.startswith(b"\x00\x00\x01\xba"):
        return MPEG_PS
    if head[:1] == b"\x47" and ts_sync == b"\x47":
        return MPEG_TS
    return None


def check_pixels(width: int, height: int, what: str = "image") -> None:
    limit = current().max_image_pixels
    if width * height > limit:
        raise ImageTooLarge(
            f"{what} of {width}x{height} = {width * height} pixels exceeds the "
            f"limit of {limit} (MAX_IMAGE_PIXELS)"
        )


def _bomb(exc: Image.DecompressionBombError) -> ImageTooLarge:
    """Pillow refuses to even open past twice its limit; say so as our limit error."""
    counted = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{counted.group(1)} pixels" if counted else "its size"
    return ImageTooLarge(
        f"image of {pixels} exceeds the limit of {current().max_image_pixels} (MAX_IMAGE_PIXELS)"
    )


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header alone (no decoding)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise _bomb(exc) from None
    except (OSError, ValueError) as exc:
        raise NotAnImage(f"not a decodable image: {_reason(exc)}") from None


def open_image(path: Path, mode: str = "RGB") -> Image.Image:
    """Decode an image within the pixel limit, upright (EXIF orientation applied), in `mode`."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _bomb(exc) from None
    except (OSError, ValueError) as exc:
        raise NotAnImage(f"not a decodable image: {_reason(exc)}") from None
    with img:
        check_pixels(*img.size)
        try:
            upright = ImageOps.exif_transpose(img)
            return upright.convert(mode)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"corrupt image: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The exception's message without the file's path (error messages carry no server paths)."""
    text = str(exc)
    if "'" in text and "/" in text:  # Pillow quotes the path: "cannot identify image file '/x/y'"
        text = text.split("'")[0].strip()
    return text or type(exc).__name__
