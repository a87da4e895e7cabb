"""media.decode: a JPEG decoded reduced holds no more pixels than asked for, and still gives what
the full-resolution decode gives (orientation, CMYK, 16-bit grey, palettes with transparency,
ICC profiles), within the pixel limit, refusing broken files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from compute.plugins import environment
from compute.plugins.environment import PluginEnvironment
from compute.plugins.media import ORIENTATION, ImageTooLarge, NotAnImage, decode, icc_profile
from compute.plugins.media_thumbnail.algorithm import Box, fitted, image_thumbnail
from tests.support.photos import STORED, big_photo, photo, psnr, reference_decode

#: Reduced decodes against the full one, resized alike: invisible differences.
MIN_PSNR = 40.0


@pytest.fixture
def limits(tmp_path: Path) -> Iterator[PluginEnvironment]:
    """The plugin environment with the default pixel limit (no server needed)."""
    env = PluginEnvironment(tmp_path / "storage", tmp_path / "models")
    saved = environment.replace_current(env)
    yield env
    environment.replace_current(saved)


@pytest.fixture(scope="module")
def camera_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_photo(tmp_path_factory.mktemp("camera") / "camera.jpg")


def srgb_profile() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    data: bytes = profile.tobytes()
    return data


def thumbnail_reference(path: Path, box: Box) -> Image.Image:
    """What image_thumbnail wrote before reduced decodes: full decode, LANCZOS with reducing_gap 3."""
    full = reference_decode(path, "RGB")
    return full.resize(fitted(full.size, box), Image.Resampling.LANCZOS, reducing_gap=3.0)


def test_a_camera_jpeg_is_decoded_at_the_scale_needed(limits: PluginEnvironment, camera_jpeg: Path) -> None:
    quarter = decode(camera_jpeg, "RGB", needs=lambda size: (size[0] // 6, size[1] // 6))
    assert (quarter.size, quarter.scale, quarter.image.size, quarter.image.mode) == (
        (4000, 3000),
        4,
        (1000, 750),
        "RGB",
    )
    grey = decode(camera_jpeg, "L", needs=lambda _size: (256, 256))
    assert (grey.scale, grey.image.size, grey.image.mode, grey.luma) == (8, (500, 375), "L", True)
    whole = decode(camera_jpeg, "RGB")
    assert (whole.scale, whole.image.size) == (1, (4000, 3000))


def test_a_phones_multi_picture_jpeg_is_decoded_reduced_too(
    limits: PluginEnvironment, tmp_path: Path
) -> None:
    """Phones append pictures (a depth map, a preview) to the photo; Pillow opens it as MPO."""
    path = tmp_path / "phone.jpg"
    with Image.open(big_photo(tmp_path / "photo.jpg", (1600, 1200))) as photo:
        photo.save(path, format="MPO", save_all=True, append_images=[photo.resize((400, 300))])
    with Image.open(path) as opened:
        assert opened.format == "MPO"
    grey = decode(path, "L", needs=lambda _size: (256, 256))
    assert (grey.scale, grey.image.size, grey.luma, grey.jpeg) == (4, (400, 300), True, True)


def test_a_thumbnail_of_a_camera_jpeg_looks_like_the_full_decodes(
    limits: PluginEnvironment, camera_jpeg: Path, tmp_path: Path
) -> None:
    box = Box(256, 256)
    written = image_thumbnail(camera_jpeg, tmp_path / "t.jpg", box)
    with Image.open(written) as ours:
        assert ours.size == (256, 192)
        # Both sides JPEG-encoded at q90: compare what the encoder was given, re-encoded alike.
        reference = Image.open(io.BytesIO(_jpeg(thumbnail_reference(camera_jpeg, box))))
        assert psnr(ours.convert("RGB"), reference.convert("RGB")) > MIN_PSNR


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_orientation_is_undone_on_a_reduced_decode(
    limits: PluginEnvironment, tmp_path: Path, orientation: int
) -> None:
    upright = Image.open(big_photo(tmp_path / "upright.jpg", (1200, 800))).convert("RGB")
    stored = STORED[orientation]
    pixels = upright if stored is None else upright.transpose(stored)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = tmp_path / "flagged.jpg"
    pixels.save(path, format="JPEG", quality=95, exif=exif)
    decoded = decode(path, "RGB", needs=lambda size: (size[0] // 4, size[1] // 4))
    assert decoded.size == (1200, 800) and decoded.scale == 4
    assert decoded.image.size == (300, 200)
    reference = reference_decode(path, "RGB").resize((150, 100), Image.Resampling.LANCZOS)
    ours = decoded.resized((150, 100))
    assert psnr(ours, reference) > MIN_PSNR
    assert psnr(ours, reference.transpose(Image.Transpose.ROTATE_180)) < 20  # the right way up


@pytest.mark.parametrize("index", range(0, 180, 9))
def test_varied_photos_thumbnail_like_the_full_decode(
    limits: PluginEnvironment, tmp_path: Path, index: int
) -> None:
    """Twenty photos of the hash set: sizes, crops, orientations, grey, CMYK, progressive."""
    made = photo(index, tmp_path)
    box = Box(320, 320)
    written = image_thumbnail(made.path, tmp_path / "t.jpg", box)
    reference = Image.open(io.BytesIO(_jpeg(thumbnail_reference(made.path, box))))
    with Image.open(written) as ours:
        assert psnr(ours.convert("RGB"), reference.convert("RGB")) > MIN_PSNR, made.recipe


def test_cmyk_jpeg_converts_as_the_full_decode_and_drops_its_profile(
    limits: PluginEnvironment, tmp_path: Path
) -> None:
    rgb = Image.open(big_photo(tmp_path / "rgb.jpg", (1600, 1200))).convert("RGB")
    cmyk_profile = bytearray(srgb_profile())
    cmyk_profile[16:20] = b"CMYK"  # a profile that describes CMYK pixels
    path = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(path, format="JPEG", quality=95, icc_profile=bytes(cmyk_profile))
    decoded = decode(path, "RGB", needs=lambda _size: (400, 300))
    assert decoded.scale == 4 and decoded.image.mode == "RGB"
    reference = reference_decode(path, "RGB").resize(decoded.image.size, Image.Resampling.LANCZOS)
    assert psnr(decoded.image, reference) > 30
    assert icc_profile(decoded.image) is None  # CMYK's profile does not describe RGB pixels
    with Image.open(image_thumbnail(path, tmp_path / "t.jpg", Box(100, 100))) as out:
        assert out.mode == "RGB" and "icc_profile" not in out.info


def test_icc_profile_travels_with_the_thumbnail(limits: PluginEnvironment, tmp_path: Path) -> None:
    profile = srgb_profile()
    path = big_photo(tmp_path / "tagged.jpg", (800, 600), icc_profile=profile)
    with Image.open(image_thumbnail(path, tmp_path / "t.jpg", Box(64, 64))) as out:
        assert out.info.get("icc_profile") == profile


def sixteen_bit_grey(path: Path) -> np.ndarray:
    """A 16-bit grey PNG spanning the whole range, left to right; its expected 8-bit pixels."""
    wide = np.tile(np.linspace(0, 0xFFFF, 256).astype(np.uint16), (32, 1))
    Image.fromarray(wide).save(path, format="PNG")
    return (wide >> 8).astype(np.uint8)


def test_sixteen_bit_grey_is_scaled_not_clipped(limits: PluginEnvironment, tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    expected = sixteen_bit_grey(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    for mode in ("L", "RGB"):
        pixels = np.asarray(decode(path, mode).image)
        got = pixels if mode == "L" else pixels[..., 0]
        assert np.array_equal(got, expected), mode  # Pillow's own convert clips: white from 255/65535


def test_palette_with_transparency_keeps_its_alpha(limits: PluginEnvironment, tmp_path: Path) -> None:
    palette = Image.new("P", (64, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (32, 0, 64, 32))
    path = tmp_path / "p.png"
    palette.save(path, format="PNG", transparency=1)
    kept = decode(path, "RGB", keep_alpha=True).image
    assert kept.mode == "RGBA"
    assert kept.getpixel((10, 10)) == (255, 0, 0, 255) and kept.getpixel((50, 10))[3] == 0  # type: ignore[index]
    assert decode(path, "RGB").image.mode == "RGB"


def test_alpha_is_kept_only_where_there_is_some(limits: PluginEnvironment, tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "opaque.png")
    Image.new("RGBA", (16, 16), (1, 2, 3, 9)).save(tmp_path / "clear.png")
    assert decode(tmp_path / "opaque.png", "RGB", keep_alpha=True).image.mode == "RGB"
    assert decode(tmp_path / "clear.png", "RGB", keep_alpha=True).image.mode == "RGBA"
    assert decode(tmp_path / "clear.png", "L", keep_alpha=True).image.mode == "LA"


def test_the_pixel_limit_counts_the_file_not_the_reduced_decode(tmp_path: Path) -> None:
    path = big_photo(tmp_path / "p.jpg", (2000, 1500))
    saved = environment.replace_current(PluginEnvironment(tmp_path, tmp_path, max_image_pixels=1_000_000))
    try:
        with pytest.raises(ImageTooLarge) as caught:
            decode(path, "L", needs=lambda _size: (8, 8))  # 250x188 would be decoded
    finally:
        environment.replace_current(saved)
    assert "2000x1500" in str(caught.value) and "MAX_IMAGE_PIXELS" in str(caught.value)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_truncated_jpeg_is_not_an_image(limits: PluginEnvironment, tmp_path: Path, mode: str) -> None:
    whole = big_photo(tmp_path / "whole.jpg", (1600, 1200)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(NotAnImage) as caught:
        decode(cut, mode, needs=lambda _size: (100, 100))
    assert "corrupt image" in str(caught.value) and str(tmp_path) not in str(caught.value)


PEAK_SCRIPT = """
import json, sys
from pathlib import Path
from compute.plugins import environment
from compute.plugins.hash.algorithm import perceptual_hashes
from compute.plugins.media_thumbnail.algorithm import Box, image_thumbnail

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

source, out = Path(sys.argv[1]), Path(sys.argv[2])
environment.replace_current(environment.PluginEnvironment(out, out))
image_thumbnail(source, out / "warm.jpg", Box(64, 64)); perceptual_hashes(source)  # imports, caches
peaks = {}
for name, job in (("thumbnail", lambda: image_thumbnail(source, out / "t.jpg", Box(256, 256))),
                  ("hash", lambda: perceptual_hashes(source))):
    before = kb("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    job()
    peaks[name] = kb("VmHWM:") - before
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_a_small_output_never_holds_the_full_picture(camera_jpeg: Path, tmp_path: Path) -> None:
    """Peak memory of a 256 px thumbnail and of the perceptual hashes of a 12 MP JPEG, in a fresh
    process: well under one full-size copy (Pillow stores RGB as 4 bytes a pixel: 46 MiB)."""
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(camera_jpeg), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peaks = json.loads(run.stdout)
    full_copy_kb = 4000 * 3000 * 4 // 1024
    assert peaks["thumbnail"] < full_copy_kb // 4, peaks
    assert peaks["hash"] < full_copy_kb // 4, peaks
