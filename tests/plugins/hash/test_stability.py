"""Perceptual hashes of a JPEG come from its luma decoded reduced (libjpeg's 1/2 to 1/8): on 216
varied photos they stay within a few bits of the hashes of the full-resolution picture, which is
what every image was hashed from before (`perceptual_decode` says which)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from compute.plugins import environment
from compute.plugins.environment import PluginEnvironment
from compute.plugins.hash.algorithm import perceptual_hashes
from tests.support.photos import Photo, big_photo, photos, reference_decode

COUNT = 216
#: Most bits a hash of the reduced decode may differ from the full-resolution one. Measured on
#: this set (INTERNALS.md, Plugins): phash 4, dhash 4, ahash 3, whash 2.
MOST_BITS = {"phash": 4, "dhash": 4, "ahash": 4, "whash": 4}
#: Share of photos whose hash must be the very same (measured: 80 to 92 %).
SAME_AT_LEAST = 0.75
#: whash of the full picture resizes it to up to 2048x2048 (0.4 s for the largest): it is
#: compared on every sixth photo here, on all of them in the measurement INTERNALS.md reports.
WHASH_EVERY = 6


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> list[Photo]:
    return photos(tmp_path_factory.mktemp("varied"), COUNT)


@pytest.fixture
def limits(tmp_path: Path) -> Iterator[None]:
    saved = environment.replace_current(PluginEnvironment(tmp_path, tmp_path))
    yield
    environment.replace_current(saved)


def full_resolution(path: Path, with_whash: bool) -> dict[str, imagehash.ImageHash]:
    grey = reference_decode(path, "L")
    hashes = {
        "phash": imagehash.phash(grey),
        "dhash": imagehash.dhash(grey),
        "ahash": imagehash.average_hash(grey),
    }
    if with_whash:
        hashes["whash"] = imagehash.whash(grey)
    return hashes


@pytest.mark.timeout(300)
def test_reduced_decodes_hash_within_a_few_bits_of_the_full_picture(
    limits: None, varied: list[Photo]
) -> None:
    distances: dict[str, list[int]] = {name: [] for name in MOST_BITS}
    decodes: Counter[str] = Counter()
    worst: dict[str, tuple[int, str]] = {name: (-1, "") for name in MOST_BITS}
    for i, made in enumerate(varied):
        ours = perceptual_hashes(made.path)
        decodes[ours["perceptual_decode"]] += 1
        for name, theirs in full_resolution(made.path, i % WHASH_EVERY == 0).items():
            bits = int(imagehash.hex_to_hash(ours[name]) - theirs)
            distances[name].append(bits)
            worst[name] = max(worst[name], (bits, made.recipe))
    # Every reduction was exercised, on enough photos to mean something.
    assert all(decodes[f"luma 1/{scale}"] >= 20 for scale in (2, 4, 8)), decodes
    for name, found in distances.items():
        assert max(found) <= MOST_BITS[name], (name, worst[name])
        same = sum(1 for b in found if b == 0) / len(found)
        assert same >= SAME_AT_LEAST, (name, same)


def test_a_camera_jpeg_is_hashed_from_its_luma_at_an_eighth(limits: None, tmp_path: Path) -> None:
    path = big_photo(tmp_path / "camera.jpg")
    ours = perceptual_hashes(path)
    assert ours["perceptual_decode"] == "luma 1/8"
    theirs = full_resolution(path, with_whash=True)
    for name, full in theirs.items():
        assert int(imagehash.hex_to_hash(ours[name]) - full) <= MOST_BITS[name], name


def test_other_formats_are_hashed_whole(limits: None, tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.open(big_photo(tmp_path / "p.jpg", (800, 600))).save(path)
    ours = perceptual_hashes(path)
    assert ours["perceptual_decode"] == "full"
    assert {name: ours[name] for name in MOST_BITS} == {
        name: str(h) for name, h in full_resolution(path, with_whash=True).items()
    }
