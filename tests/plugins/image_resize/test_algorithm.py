"""image_resize's algorithm on real images: sizes, content, orientation, alpha, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageCms

from compute.plugins.environment import PluginEnvironment
from compute.plugins.image_resize.algorithm import resize, target_size
from compute.plugins.media import ImageTooLarge, NotAnImage
from tests.support.photos import big_photo, psnr, reference_decode

EXIF_ORIENTATION = 0x0112


@pytest.mark.parametrize(
    ("source", "box", "keep", "expected"),
    [
        ((400, 200), (100, 100), True, (100, 50)),  # wide: width limits
        ((200, 400), (100, 100), True, (50, 100)),  # tall: height limits
        ((40, 20), (200, 300), True, (200, 100)),  # small: scaled up to fit
        ((400, 200), (100, 100), False, (100, 100)),  # exact, shape ignored
        ((3000, 1), (10, 10), True, (10, 1)),  # never below one pixel
        ((300, 200), (150, 100), True, (150, 100)),  # same shape: both sides exact
    ],
)
def test_target_size(
    source: tuple[int, int], box: tuple[int, int], keep: bool, expected: tuple[int, int]
) -> None:
    assert target_size(source, *box, keep) == expected


def halves(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    """Left half red, right half blue: shows whether the picture survived, not just its size."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    img.save(path, format=fmt)
    return path


def test_fit_keeps_the_picture(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    source = halves(tmp_path / "in.png", (400, 200))
    assert resize(source, tmp_path / "out.png", 100, 100, True) == (100, 50)
    with Image.open(tmp_path / "out.png") as out:
        assert out.format == "PNG" and out.size == (100, 50)
        rgb = out.convert("RGB")
        assert rgb.getpixel((10, 25)) == (255, 0, 0)
        assert rgb.getpixel((90, 25)) == (0, 0, 255)


def test_exact_size_stretches(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    source = halves(tmp_path / "in.jpg", (400, 200), "JPEG")
    assert resize(source, tmp_path / "out.jpg", 30, 90, False) == (30, 90)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.format == "JPEG" and out.size == (30, 90) and out.mode == "RGB"
        red = out.getpixel((3, 45))
        assert isinstance(red, tuple) and red[0] > 200 and red[2] < 60


def test_orientation_is_applied_before_fitting(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown rotated 90° (portrait)
    Image.new("RGB", (200, 100), (0, 128, 0)).save(tmp_path / "in.jpg", exif=exif)
    assert resize(tmp_path / "in.jpg", tmp_path / "out.jpg", 50, 50, True) == (25, 50)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.getexif().get(EXIF_ORIENTATION, 1) == 1  # turned once, not again by a viewer


def test_alpha_survives_in_png(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((255, 255, 255, 255), (0, 0, 32, 64))
    img.save(tmp_path / "in.png")
    resize(tmp_path / "in.png", tmp_path / "out.png", 16, 16, True)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA"
        assert out.getpixel((2, 8))[3] == 255 and out.getpixel((14, 8))[3] == 0  # type: ignore[index]


def test_requested_output_over_the_limit_is_refused(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    source = halves(tmp_path / "in.png", (8, 8))
    with pytest.raises(ImageTooLarge, match="MAX_IMAGE_PIXELS"):
        resize(source, tmp_path / "out.png", 20_000, 20_000, False)
    assert not (tmp_path / "out.png").exists()


def test_truncated_image_is_not_an_image(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    whole = halves(tmp_path / "whole.png", (256, 256))
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[:200])
    with pytest.raises(NotAnImage) as caught:
        resize(tmp_path / "cut.png", tmp_path / "out.png", 10, 10, True)
    assert str(tmp_path) not in str(caught.value)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_camera_jpeg_resized_from_a_reduced_decode_matches_the_full_one(
    plugin_env: PluginEnvironment, tmp_path: Path, orientation: int
) -> None:
    """A 4000x3000 JPEG to 800 px is decoded at 1/2 (still twice the output): what LANCZOS makes
    of it is what it makes of the full picture, within an invisible difference; the ICC profile
    goes along."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    source = big_photo(tmp_path / "camera.jpg", icc_profile=profile, exif=exif)
    size = resize(source, tmp_path / "out.png", 800, 800, True)
    assert size == ((800, 600) if orientation == 1 else (600, 800))
    reference = reference_decode(source, "RGB").resize(size, Image.Resampling.LANCZOS)
    with Image.open(tmp_path / "out.png") as out:
        assert out.info.get("icc_profile") == profile
        assert psnr(out.convert("RGB"), reference) > 40
