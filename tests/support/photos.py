"""A varied set of photos made by the tests (nothing downloaded): scikit-image's bundled pictures
cropped, scaled to several sizes, turned by EXIF orientation flags, given sensor-like grain and
encoded (and some re-encoded) as JPEG at several qualities and subsamplings, a few as grey, CMYK
or progressive JPEGs, a few as PNG. Deterministic: photo `i` is always the same file.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps
from skimage import data

from compute.plugins.media import ORIENTATION

#: scikit-image's bundled pictures (shipped with the package): photographs, micrographs, textures,
#: text and synthetic ones.
SOURCES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "hubble_deep_field",
    "camera",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "cell",
    "clock",
    "colorwheel",
    "page",
    "text",
)
#: Long sides: phone and camera sizes, each libjpeg scale (1/1 to 1/8) well represented.
LONG_SIDES = (320, 640, 800, 1024, 1280, 1600, 2048, 2560, 3264, 4032)
PNG_LONGEST = 1280
#: Grain is drawn once per photo at this size and tiled: pixel-level detail, cheaply.
GRAIN_TILE = 257
#: How each orientation stores the upright picture: the inverse of what a reader undoes.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Photo:
    path: Path
    #: What was done to it, for a failure's message.
    recipe: str


def _source(name: str) -> Image.Image:
    pixels = getattr(data, name)()
    img = Image.fromarray(pixels)
    return img.convert("RGB") if img.mode not in ("RGB", "L") else img


def photo(i: int, folder: Path) -> Photo:
    rng = random.Random(i)
    name = SOURCES[i % len(SOURCES)]
    img = _source(name)
    w, h = img.size
    fw, fh = rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    left, top = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
    img = img.crop((round(left), round(top), round(left + fw * w), round(top + fh * h)))
    long_side = rng.choice(LONG_SIDES)
    scale = long_side / max(img.size)
    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    grain = rng.choice((0.0, 2.0, 5.0))
    if grain:
        bands = (3,) if img.mode == "RGB" else ()
        tile = np.random.default_rng(i).normal(128, grain, (GRAIN_TILE, GRAIN_TILE, *bands))
        reps = (-(-img.height // GRAIN_TILE), -(-img.width // GRAIN_TILE), *([1] * len(bands)))
        noise = np.tile(np.clip(tile, 0, 255).astype(np.uint8), reps)[: img.height, : img.width]
        img = ImageChops.add(img, Image.fromarray(noise, img.mode), offset=-128)
    orientation = rng.choice((1, 1, 1, 2, 3, 4, 5, 6, 6, 7, 8, 8))
    stored = STORED[orientation]
    if stored is not None:
        img = img.transpose(stored)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    kind = rng.choices(("jpeg", "reencoded", "cmyk", "png"), (14, 4, 1, 1))[0]
    quality = rng.choice((55, 75, 85, 92, 97))
    subsampling = rng.choice((0, 2))
    progressive = rng.random() < 0.25
    recipe = (
        f"#{i} {name} crop {fw:.2f}x{fh:.2f} -> {img.size}, grain {grain}, orientation {orientation}, "
        f"{kind} q{quality} subsampling {subsampling}{' progressive' if progressive else ''}"
    )
    if kind == "png" and max(img.size) > PNG_LONGEST:
        kind = "jpeg"  # a big PNG takes long to write, and hashes the same as its pixels
    if kind == "png":
        path = folder / f"photo{i:03d}.png"
        img.save(path, format="PNG", exif=exif)
        return Photo(path, recipe)
    if kind == "cmyk":
        img = img.convert("CMYK")
    if kind == "reencoded":
        first = io.BytesIO()
        img.save(first, format="JPEG", quality=rng.choice((70, 90)))
        img = Image.open(first)
    path = folder / f"photo{i:03d}.jpg"
    options: dict[str, object] = {"quality": quality, "exif": exif, "progressive": progressive}
    if img.mode != "L":
        options["subsampling"] = subsampling
    img.save(path, format="JPEG", **options)
    return Photo(path, recipe)


def photos(folder: Path, count: int) -> list[Photo]:
    folder.mkdir(parents=True, exist_ok=True)
    return [photo(i, folder) for i in range(count)]


def big_photo(path: Path, size: tuple[int, int] = (4000, 3000), **options: object) -> Path:
    """A camera-sized JPEG (q92 by default) with photo-like content: the astronaut over a
    blurred copy of herself, with grain."""
    astronaut = _source("astronaut")
    w, h = size
    img = astronaut.resize(size, Image.Resampling.BILINEAR)
    img.paste(astronaut.resize((min(w, h), min(w, h)), Image.Resampling.BILINEAR), ((w - min(w, h)) // 2, 0))
    tile = np.random.default_rng(0).normal(128, 4, (GRAIN_TILE, GRAIN_TILE, 3))
    reps = (-(-h // GRAIN_TILE), -(-w // GRAIN_TILE), 1)
    noise = np.tile(np.clip(tile, 0, 255).astype(np.uint8), reps)[:h, :w]
    img = ImageChops.add(img, Image.fromarray(noise, "RGB"), offset=-128)
    img.save(path, format="JPEG", **{"quality": 92, **options})
    return path


def reference_decode(path: Path, mode: str) -> Image.Image:
    """The full-resolution decode every image plugin used before reduced decodes: the whole
    picture, turned upright by Pillow's exif_transpose, converted to `mode`."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img)
        assert upright is not None
        return upright.convert(mode)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of two same-sized pictures, in dB (inf when equal); above
    about 40 dB the difference is invisible."""
    assert a.size == b.size and a.mode == b.mode, (a.size, b.size, a.mode, b.mode)
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10 * float(np.log10(255**2 / mse))
