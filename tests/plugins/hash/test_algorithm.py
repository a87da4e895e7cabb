"""hash's algorithm on real files: digests equal hashlib's, perceptual hashes follow what images look like."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from compute.plugins.environment import PluginEnvironment
from compute.plugins.hash.algorithm import CHUNK_BYTES, file_digests, perceptual_hashes
from compute.plugins.media import NotAnImage
from tests.support.hash_samples import blocks, encoded

EXIF_ORIENTATION = 0x0112
HASHES = ("phash", "dhash", "ahash", "whash")


def distance(a: str, b: str) -> int:
    return int(imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b))


def test_digests_match_hashlib_and_stream_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES * 3 // 256 + 7)  # a bit over three chunks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    digests = file_digests(path, ["md5", "sha512"], lambda done, total: seen.append((done, total)))
    assert digests == {"md5": hashlib.md5(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}
    assert len(seen) == 4 and seen[-1] == (len(data), len(data))
    assert all(done <= CHUNK_BYTES * (i + 1) for i, (done, _) in enumerate(seen))


def test_same_algorithm_twice_is_one_digest(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    digests = file_digests(tmp_path / "a", ["sha512", "sha512"])
    assert digests == {"sha512": hashlib.sha512(b"abc").hexdigest()}


def test_empty_file_has_the_empty_digest(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert file_digests(tmp_path / "empty", ["md5"]) == {"md5": hashlib.md5(b"").hexdigest()}


def test_same_pixels_other_encoding_hash_alike(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    picture = blocks(1)
    (tmp_path / "a.png").write_bytes(encoded(picture, "PNG"))
    (tmp_path / "b.webp").write_bytes(encoded(picture, "WEBP", lossless=True))
    (tmp_path / "c.bmp").write_bytes(encoded(picture, "BMP"))
    hashes = [perceptual_hashes(tmp_path / name) for name in ("a.png", "b.webp", "c.bmp")]
    assert hashes[0] == hashes[1] == hashes[2]
    assert set(hashes[0]) == {*HASHES, "perceptual_decode"}
    assert hashes[0]["perceptual_decode"] == "full"
    assert all(len(hashes[0][name]) == 16 and int(hashes[0][name], 16) >= 0 for name in HASHES)
    assert len({file_digests(tmp_path / n, ["sha512"])["sha512"] for n in ("a.png", "b.webp", "c.bmp")}) == 3


def test_lossy_copy_is_near_and_another_picture_is_far(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encoded(blocks(1), "PNG"))
    (tmp_path / "a.jpg").write_bytes(encoded(blocks(1), "JPEG", quality=80))
    (tmp_path / "b.png").write_bytes(encoded(blocks(2), "PNG"))
    original, lossy, other = (perceptual_hashes(tmp_path / n) for n in ("a.png", "a.jpg", "b.png"))
    assert distance(original["phash"], lossy["phash"]) <= 4
    assert distance(original["phash"], other["phash"]) >= 16
    assert original["dhash"] != other["dhash"] and original["ahash"] != other["ahash"]


def test_orientation_flag_is_applied(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    picture = blocks(3)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3  # stored upside down
    (tmp_path / "flagged.png").write_bytes(encoded(picture.rotate(180), "PNG", exif=exif))
    (tmp_path / "upright.png").write_bytes(encoded(picture, "PNG"))
    assert perceptual_hashes(tmp_path / "flagged.png") == perceptual_hashes(tmp_path / "upright.png")


def test_truncated_image_is_not_an_image(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    whole = encoded(Image.frombytes("RGB", (128, 128), bytes(range(256)) * 192), "PNG")
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(NotAnImage) as caught:
        perceptual_hashes(tmp_path / "cut.png")
    assert str(tmp_path) not in str(caught.value)
