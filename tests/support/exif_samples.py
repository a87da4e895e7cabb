"""Test media for the exif plugin: JPEGs with EXIF written by Pillow (not by the tool under test)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
from PIL import Image

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

# EXIF tag numbers (TIFF/EXIF 2.3)
MAKE, MODEL, ORIENTATION, SOFTWARE, DATE_TIME = 0x010F, 0x0110, 0x0112, 0x0131, 0x0132
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXPOSURE_TIME, F_NUMBER, ISO, DATE_TIME_ORIGINAL, FOCAL_LENGTH = 0x829A, 0x829D, 0x8827, 0x9003, 0x920A
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON, GPS_ALT_REF, GPS_ALT = 1, 2, 3, 4, 5, 6


def photo(exif: bool = True, size: tuple[int, int] = (40, 30)) -> bytes:
    """A JPEG from a 'Canon EOS 5D' in Sydney (33°51'36"S 151°12'36"E, 58.5 m), or without EXIF."""
    data = Image.Exif()
    if exif:
        data[MAKE], data[MODEL], data[SOFTWARE] = "Canon", "EOS 5D", "FirmwareX 1.2"
        data[DATE_TIME], data[ORIENTATION] = "2024:01:02 03:04:05", 1
        ifd = data.get_ifd(EXIF_IFD)
        ifd[DATE_TIME_ORIGINAL], ifd[ISO], ifd[F_NUMBER] = "2023:05:06 07:08:09", 200, 2.8
        ifd[EXPOSURE_TIME], ifd[FOCAL_LENGTH] = 0.01, 50.0
        gps = data.get_ifd(GPS_IFD)
        gps[GPS_LAT_REF], gps[GPS_LAT] = "S", (33.0, 51.0, 36.0)
        gps[GPS_LON_REF], gps[GPS_LON] = "E", (151.0, 12.0, 36.0)
        gps[GPS_ALT_REF], gps[GPS_ALT] = 0, 58.5
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, format="JPEG", exif=data)
    return buf.getvalue()


#: An MPEG program stream header and then nonsense: exiftool reports "File format error".
BROKEN_MPEG = b"\x00\x00\x01\xba" + b"garbage!" * 30


def png_with_xmp(properties: str) -> bytes:
    """A 1x1 PNG whose XMP (an iTXt chunk) holds `properties`, XML inside rdf:Description."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    xmp = (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f'{properties}</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + chunk(b"IEND", b"")
    )


def xmp_description(text: str) -> str:
    """An XMP dc:description (ExifTool's `Description`) of `text`."""
    return f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{text}</rdf:li></rdf:Alt></dc:description>'


def xmp_labels(count: int, length: int) -> str:
    """`count` XMP properties (`Label0`, `Label1`, ...), each a value of `length` characters."""
    return "".join(f"<xmp:Label{i}>{'v' * length}</xmp:Label{i}>" for i in range(count))
