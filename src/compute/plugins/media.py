"""What an uploaded file really is (magic bytes, not its name), and images opened within limits."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

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


#: MPEG-TS packets are 188 bytes, each starting with the sync byte 0x47.
TS_PACKET = 188


def sniff(path: Path) -> MediaKind | None:
    """The file's kind from its first bytes, or None when it is none of the kinds above."""
    with open(path, "rb") as f:
        start = f.read(TS_PACKET + 1)
    return sniff_bytes(start[:HEADER_BYTES], start[TS_PACKET : TS_PACKET + 1])


def sniff_fd(fd: int) -> MediaKind | None:
    """`sniff` of an open file (read where it is, the descriptor's offset left alone)."""
    start = os.pread(fd, TS_PACKET + 1, 0)
    return sniff_bytes(start[:HEADER_BYTES], start[TS_PACKET : TS_PACKET + 1])


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


#: EXIF tag of the orientation: 1 is upright, 2-8 a flip and/or rotation to undo.
ORIENTATION = 0x0112
_UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Orientations that swap width and height.
_SIDEWAYS = {5, 6, 7, 8}
#: Pillow's modes for 16-bit (and 32-bit integer) grey; its own conversion to 8 bits clips at
#: 255 instead of scaling, which turns most of a 16-bit picture white.
_WIDE_GREY = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
#: The colour space an ICC profile must describe (its header's bytes 16-20) to go with a mode.
_PROFILE_SPACES = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY"}

#: Given the picture's upright (width, height), the smallest upright size the caller needs.
Needs = Callable[[tuple[int, int]], tuple[int, int]]


@dataclass(frozen=True)
class Decoded:
    """An image decoded upright, and how it relates to the file."""

    image: Image.Image
    #: The picture's upright size in the file (before any reduced decode).
    size: tuple[int, int]
    #: The image is 1/scale of `size` per side (rounded up): libjpeg decoded it reduced.
    scale: int = 1
    #: libjpeg decoded the luma channel alone (mode "L" from a colour JPEG, or a grey JPEG).
    luma: bool = False
    #: The file is a JPEG (a phone's multi-picture JPEG, MPO, included).
    jpeg: bool = False
    #: The region of `image` that holds the picture, for `Image.resize(box=...)`: a reduced
    #: decode rounds its size up, so its last row and column hold only part of a pixel.
    box: tuple[float, float, float, float] | None = None

    def resized(self, size: tuple[int, int], reducing_gap: float | None = None) -> Image.Image:
        """The picture resized with LANCZOS to `size` (not a copy when it already is that size)."""
        if size == self.image.size and self.scale == 1:
            return self.image
        return self.image.resize(size, Image.Resampling.LANCZOS, box=self.box, reducing_gap=reducing_gap)


def decode(path: Path, mode: str = "RGB", *, keep_alpha: bool = False, needs: Needs | None = None) -> Decoded:
    """Decode an image within the pixel limit, upright (EXIF orientation applied), in `mode`.

    keep_alpha: RGBA (LA for "L") instead when the image has an alpha channel or a transparent
    colour. needs: a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 of its size (DCT scaling: the
    full-size pixels never exist) when that is still at least `needs(size)`; for "L" it decodes
    the luma channel alone. Nothing is copied that the caller does not get: no same-mode convert,
    no transpose of an upright image.
    """
    with open(path, "rb") as f:
        try:
            img = Image.open(f)
        except Image.DecompressionBombError as exc:
            raise _bomb(exc) from None
        except (OSError, ValueError) as exc:
            raise NotAnImage(f"not a decodable image: {_reason(exc)}") from None
        check_pixels(*img.size)
        try:
            return _decode(img, mode, keep_alpha, needs)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"corrupt image: {_reason(exc)}") from None


def _decode(img: Image.Image, mode: str, keep_alpha: bool, needs: Needs | None) -> Decoded:
    # Phones write multi-picture JPEGs (a depth map, a preview after the photo): Pillow opens them
    # as MPO, a JPEG whose first picture decodes like any other.
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    orientation = img.getexif().get(ORIENTATION, 1)  # a PNG's eXIf may follow its pixels: this decodes it
    sideways = orientation in _SIDEWAYS
    width, height = img.size
    upright = (height, width) if sideways else (width, height)
    if keep_alpha and img.has_transparency_data:
        mode = {"RGB": "RGBA", "L": "LA"}.get(mode, mode)
    scale, luma = 1, False
    box: tuple[float, float, float, float] | None = None
    if jpeg and (needs is not None or mode == "L"):
        want = None
        if needs is not None:
            w, h = needs(upright)
            want = (max(1, h), max(1, w)) if sideways else (max(1, w), max(1, h))
        drafted = img.draft(mode, want)
        if drafted is not None:
            x0, y0, x1, y1 = drafted[1]
            box = (float(x0), float(y0), float(x1), float(y1))
            scale = round(width / x1)
        luma = img.mode == "L"
    img.load()
    if img.mode in _WIDE_GREY:
        img = _to_8_bits(img)
    if img.mode != mode:
        img = img.convert(mode)
    if orientation in _UNDO:
        if box is not None:
            box = _turned(box, img.size, orientation)
        img = img.transpose(_UNDO[orientation])
    return Decoded(img, upright, scale, luma, jpeg, box)


def _turned(
    box: tuple[float, float, float, float], size: tuple[int, int], orientation: int
) -> tuple[float, float, float, float]:
    """`box` of an image of `size` where it lands once the orientation is undone."""
    w, h = size

    def move(x: float, y: float) -> tuple[float, float]:
        return {
            2: (w - x, y),
            3: (w - x, h - y),
            4: (x, h - y),
            5: (y, x),
            6: (h - y, x),
            7: (h - y, w - x),
            8: (y, w - x),
        }[orientation]

    (x0, y0), (x1, y1) = move(box[0], box[1]), move(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _to_8_bits(img: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits (its high byte), keeping a transparent grey level as alpha."""
    wide = np.clip(np.asarray(img), 0, 0xFFFF)
    grey = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(wide == transparent, 0, 255).astype(np.uint8), "L")
        grey = Image.merge("LA", (grey, alpha))
    grey.info = {k: v for k, v in img.info.items() if k != "transparency"}
    return grey


def open_image(path: Path, mode: str = "RGB") -> Image.Image:
    """Decode an image within the pixel limit, upright (EXIF orientation applied), in `mode`."""
    return decode(path, mode).image


def icc_profile(image: Image.Image) -> bytes | None:
    """The image's embedded ICC profile when it describes the colour space of the image's mode
    (RGB or grey), to be written with it; else None: a CMYK profile on pixels converted to RGB
    would make viewers misrender them, and no profile means sRGB."""
    icc = image.info.get("icc_profile")
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    space = icc[16:20]
    if (image.mode in ("RGB", "RGBA") and space == b"RGB ") or (
        image.mode in ("L", "LA") and space == b"GRAY"
    ):
        return icc
    return None


def _reason(exc: BaseException) -> str:
    """The exception's message without the file's path (error messages carry no server paths)."""
    text = str(exc)
    if "'" in text and "/" in text:  # Pillow quotes the path: "cannot identify image file '/x/y'"
        text = text.split("'")[0].strip()
    return text or type(exc).__name__
