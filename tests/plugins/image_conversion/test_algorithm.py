"""image_conversion's algorithm: the same picture in another format, upright, in RGB unless it has
transparency the format can keep, with its ICC profile; lossless formats lose nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from compute.plugins import environment
from compute.plugins.environment import PluginEnvironment
from compute.plugins.image_conversion.algorithm import convert
from compute.plugins.media import ORIENTATION
from tests.support.photos import big_photo, psnr, reference_decode


@pytest.fixture(autouse=True)
def limits(tmp_path: Path) -> Iterator[None]:
    saved = environment.replace_current(PluginEnvironment(tmp_path, tmp_path))
    yield
    environment.replace_current(saved)


@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return big_photo(tmp_path_factory.mktemp("photo") / "photo.jpg", (1200, 900), icc_profile=profile)


def test_jpeg_to_png_is_lossless_rgb_with_the_profile(photo_jpeg: Path, tmp_path: Path) -> None:
    convert(photo_jpeg, tmp_path / "out.png", "png", 85)
    with Image.open(photo_jpeg) as source:
        profile = source.info["icc_profile"]
    with Image.open(tmp_path / "out.png") as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGB", (1200, 900))
        assert out.info.get("icc_profile") == profile
        assert np.array_equal(np.asarray(out), np.asarray(reference_decode(photo_jpeg, "RGB")))


@pytest.mark.parametrize(
    ("fmt", "pillow"), [("jpg", "JPEG"), ("webp", "WEBP"), ("tiff", "TIFF"), ("bmp", "BMP")]
)
def test_opaque_pictures_stay_rgb(photo_jpeg: Path, tmp_path: Path, fmt: str, pillow: str) -> None:
    target = tmp_path / f"out.{fmt}"
    convert(photo_jpeg, target, fmt, 90)
    with Image.open(target) as out:
        assert (out.format, out.mode, out.size) == (pillow, "RGB", (1200, 900))
        assert psnr(out.convert("RGB"), reference_decode(photo_jpeg, "RGB")) > 35


def test_transparency_is_kept_where_the_format_can(tmp_path: Path) -> None:
    palette = Image.new("P", (64, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (32, 0, 64, 32))
    palette.save(tmp_path / "p.png", transparency=1)
    convert(tmp_path / "p.png", tmp_path / "out.png", "png", 85)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA"
        assert out.getpixel((10, 10)) == (255, 0, 0, 255) and out.getpixel((50, 10))[3] == 0  # type: ignore[index]
    convert(tmp_path / "p.png", tmp_path / "out.jpg", "jpg", 95)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB"


def test_png_to_jpeg_is_upright(tmp_path: Path) -> None:
    upright = Image.new("RGB", (300, 200), (250, 0, 0))
    upright.paste((0, 0, 250), (0, 0, 300, 50))  # blue along the top
    exif = Image.Exif()
    exif[ORIENTATION] = 3
    upright.rotate(180).save(tmp_path / "flagged.png", exif=exif)
    convert(tmp_path / "flagged.png", tmp_path / "out.jpg", "jpg", 95)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (300, 200)
        top, bottom = out.getpixel((150, 10)), out.getpixel((150, 190))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert top[2] > 200 and bottom[0] > 200


def test_sixteen_bit_grey_png_keeps_its_tones(tmp_path: Path) -> None:
    wide = np.tile(np.linspace(0, 0xFFFF, 256).astype(np.uint16), (16, 1))
    Image.fromarray(wide).save(tmp_path / "g16.png")
    convert(tmp_path / "g16.png", tmp_path / "out.png", "png", 85)
    with Image.open(tmp_path / "out.png") as out:
        assert np.array_equal(np.asarray(out.convert("L")), (wide >> 8).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff", "bmp", "gif"])
def test_a_turned_photo_is_written_upright_without_its_flag(tmp_path: Path, fmt: str) -> None:
    """The pixels are turned; an orientation flag carried along would make viewers turn them again."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, shown portrait
    source = big_photo(tmp_path / "turned.jpg", (400, 300), exif=exif)
    target = tmp_path / f"out.{fmt}"
    convert(source, target, fmt, 90)
    with Image.open(target) as out:
        assert out.size == (300, 400)
        assert out.getexif().get(ORIENTATION, 1) == 1
