"""media_thumbnail's algorithm on real pictures and ffmpeg-made videos: sizes, content, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageStat

from compute.plugins.environment import PluginEnvironment
from compute.plugins.media import NotAnImage
from compute.plugins.media_thumbnail.algorithm import GRID, Box, fitted, image_thumbnail, video_thumbnail
from compute.plugins.tools import ToolFailed
from tests.support.videos import CORRUPT_MP4, without_keyframes

EXIF_ORIENTATION = 0x0112


@pytest.mark.parametrize(
    ("source", "box", "expected"),
    [
        ((400, 200), Box(100, 100), (100, 50)),  # wide: width limits
        ((200, 400), Box(100, 100), (50, 100)),  # tall: height limits
        ((40, 20), Box(256, 256), (40, 20)),  # small: never enlarged
        ((400, 200), Box(100, 100, False), (100, 100)),  # exact box, shape ignored
        ((40, 20), Box(256, 128, False), (256, 128)),  # exact box may enlarge
        ((3000, 1), Box(10, 10), (10, 1)),  # never below one pixel
    ],
)
def test_fitted(source: tuple[int, int], box: Box, expected: tuple[int, int]) -> None:
    assert fitted(source, box) == expected


def halves(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    """Left half red, right half blue: shows the picture survived, not only its size."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    img.save(path, format=fmt)
    return path


def test_image_fits_the_box_as_jpeg(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    written = image_thumbnail(halves(tmp_path / "in.png", (800, 400)), tmp_path / "thumb.jpg", Box(256, 256))
    assert written == tmp_path / "thumb.jpg"
    with Image.open(written) as out:
        assert (out.format, out.size, out.mode) == ("JPEG", (256, 128), "RGB")
        left, right = out.getpixel((20, 64)), out.getpixel((236, 64))
        assert isinstance(left, tuple) and isinstance(right, tuple)
        assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_exact_box(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    written = image_thumbnail(
        halves(tmp_path / "in.jpg", (800, 400), "JPEG"), tmp_path / "t.jpg", Box(64, 96, keep_aspect=False)
    )
    with Image.open(written) as out:
        assert out.size == (64, 96)


def test_orientation_is_applied(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown portrait
    Image.new("RGB", (400, 200), (0, 128, 0)).save(tmp_path / "in.jpg", exif=exif)
    with Image.open(image_thumbnail(tmp_path / "in.jpg", tmp_path / "t.jpg", Box(100, 100))) as out:
        assert out.size == (50, 100)
        assert out.getexif().get(EXIF_ORIENTATION, 1) == 1  # turned once, not again by a viewer


def test_transparency_gives_png_and_opaque_alpha_gives_jpeg(
    plugin_env: PluginEnvironment, tmp_path: Path
) -> None:
    see_through = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    see_through.paste((255, 255, 255, 255), (0, 0, 32, 64))
    see_through.save(tmp_path / "clear.png")
    written = image_thumbnail(tmp_path / "clear.png", tmp_path / "t.jpg", Box(32, 32))
    assert written == tmp_path / "t.png" and not (tmp_path / "t.jpg").exists()
    with Image.open(written) as out:
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == (32, 32)
        assert out.getpixel((2, 16))[3] == 255 and out.getpixel((30, 16))[3] == 0  # type: ignore[index]

    Image.new("RGBA", (64, 64), (10, 200, 10, 255)).save(tmp_path / "opaque.png")
    assert image_thumbnail(tmp_path / "opaque.png", tmp_path / "o.jpg", Box(32, 32)) == tmp_path / "o.jpg"


def test_truncated_image_is_refused_without_paths(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    whole = halves(tmp_path / "whole.png", (256, 256))
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[:100])
    with pytest.raises(NotAnImage) as caught:
        image_thumbnail(tmp_path / "cut.png", tmp_path / "t.jpg", Box(32, 32))
    assert str(tmp_path) not in str(caught.value)


def cells(sheet: Image.Image) -> list[float]:
    """Mean brightness of each cell of the sheet, row by row."""
    gray = sheet.convert("L")
    w, h = gray.width // GRID, gray.height // GRID
    return [
        ImageStat.Stat(gray.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))).mean[0]
        for r in range(GRID)
        for c in range(GRID)
    ]


async def test_video_sheet_has_sixteen_keyframes(sheet_video: Path, tmp_path: Path) -> None:
    written = await video_thumbnail(sheet_video, tmp_path / "thumb.jpg", Box(256, 256))
    with Image.open(written) as out:
        # 320x240 frames in 64x64 cells: 64x48 each, 4x4 of them.
        assert (out.format, out.size) == ("JPEG", (256, 192))
        assert min(cells(out)) > 40, "every cell holds a frame"


async def test_video_sheet_exact_box(sheet_video: Path, tmp_path: Path) -> None:
    written = await video_thumbnail(sheet_video, tmp_path / "thumb.jpg", Box(200, 60, keep_aspect=False))
    with Image.open(written) as out:
        assert out.size == (200, 60)


async def test_short_video_fills_part_of_the_sheet(short_video: Path, tmp_path: Path) -> None:
    written = await video_thumbnail(short_video, tmp_path / "thumb.jpg", Box(256, 256))
    with Image.open(written) as out:
        assert out.size == (256, 192)
        brightness = cells(out)
    assert brightness[0] > 40 and brightness[1] > 40, "the two keyframes"
    assert max(brightness[2:]) < 10, "the rest of the sheet is blank"


async def test_video_without_keyframes_gives_its_first_frame(tmp_path: Path) -> None:
    source = without_keyframes(tmp_path / "live.ts")
    written = await video_thumbnail(source, tmp_path / "thumb.jpg", Box(160, 160))
    with Image.open(written) as out:
        assert out.size == (160, 120)
        assert min(cells(out)) > 40, "one whole frame, not a sheet with blank cells"


async def test_corrupt_video_fails_with_ffmpegs_reason(tmp_path: Path) -> None:
    source = tmp_path / "bad.mp4"
    source.write_bytes(CORRUPT_MP4)
    with pytest.raises(ToolFailed) as caught:
        await video_thumbnail(source, tmp_path / "thumb.jpg", Box(64, 64), hide=[tmp_path])
    message = str(caught.value)
    assert message.startswith("ffmpeg failed:") and "moov atom not found" in message
    assert str(tmp_path) not in message and "bad.mp4" in message
    assert not (tmp_path / "thumb.jpg").exists()
