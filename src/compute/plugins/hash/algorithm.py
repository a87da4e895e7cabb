"""Digests of a file's bytes, read in chunks, and perceptual hashes of an image with imagehash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import imagehash

from compute.plugins.media import open_image

#: Read size for digests: videos are hashed without being held in memory.
CHUNK_BYTES = 1 << 20

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
    that look alike, whatever their encoding.

    The image is decoded upright (EXIF orientation applied), so a photo and its rotated-by-flag
    twin hash alike. Every imagehash function starts by converting to grey, so that is done once.
    """
    grey = open_image(path, mode="L")
    return {
        "phash": str(imagehash.phash(grey)),
        "dhash": str(imagehash.dhash(grey)),
        "ahash": str(imagehash.average_hash(grey)),
        "whash": str(imagehash.whash(grey)),
    }
