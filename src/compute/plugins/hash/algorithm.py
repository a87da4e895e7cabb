"""Digests of a file's bytes, read in chunks, and perceptual hashes of an image with imagehash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import imagehash

from compute.plugins.media import Decoded, decode

#: Read size for digests: videos are hashed without being held in memory.
CHUNK_BYTES = 1 << 20

#: A JPEG is hashed from its luma decoded reduced, to no less than this on its short side: a
#: 12 MP photo at 1/8 (500x375). The largest grid a hash reads is 32x32 (phash).
HASH_SIDE = 256

#: (bytes done, bytes in all)
ByteProgress = Callable[[int, int], None]


def file_digests(
    path: Path, algorithms: Iterable[str], on_progress: ByteProgress | None = None
) -> dict[str, str]:
    """Hex digests of the file's bytes, one per algorithm, in a single pass over the file."""
    # usedforsecurity=False: md5 here identifies files; it must work on FIPS-restricted builds too.
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in dict.fromkeys(algorithms)}
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for hasher in hashers.values():
                hasher.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def perceptual_hashes(path: Path) -> dict[str, str]:
    """64-bit perceptual hashes as 16 hex digits: equal or near (few differing bits) for images
    that look alike, whatever their encoding; and `perceptual_decode`, what they were computed on.

    The image is decoded upright (EXIF orientation applied), so a photo and its rotated-by-flag
    twin hash alike, and grey, as every imagehash function starts by converting to grey. A JPEG
    is decoded by libjpeg as its luma channel alone, reduced (1/2 to 1/8 per side) to no less
    than HASH_SIDE: the hashes then differ from those of the full-resolution picture by a few
    bits at most (measured: INTERNALS.md, Plugins), and `perceptual_decode` says so ("luma 1/8";
    "grey 1/8" for a CMYK JPEG). Any other format is decoded whole and converted to grey
    ("full"), as every image was before that field existed.
    """
    decoded = decode(path, mode="L", needs=lambda _size: (HASH_SIDE, HASH_SIDE))
    grey = decoded.image
    return {
        "phash": str(imagehash.phash(grey)),
        "dhash": str(imagehash.dhash(grey)),
        "ahash": str(imagehash.average_hash(grey)),
        "whash": str(imagehash.whash(grey)),
        "perceptual_decode": _described(decoded),
    }


def _described(decoded: Decoded) -> str:
    if decoded.luma:
        return f"luma 1/{decoded.scale}"
    return "full" if decoded.scale == 1 else f"grey 1/{decoded.scale}"  # e.g. a CMYK JPEG
