"""The plugins section's standard inputs, made by the benchmark into its own temporary folder.

* a 1920x1080 JPEG with photo-like content: scikit-image's astronaut (a real photograph, NASA,
  public domain) scaled to 1080 px high over a blurred, widened copy of itself, with a little
  sensor-like noise, and EXIF tags written with Pillow (camera, exposure, date, GPS) so that
  `exif` has something to read. Without scikit-image: a colour gradient with noise.
* the same picture made at 4000x3000 (12 MP, a phone camera's size) as a JPEG q92 with the same
  EXIF, and as a PNG (Pillow's default level): issue 19's inputs for the image plugins' rows
  (1600x1200 in --quick).
* a 1280x720 H.264 + AAC MP4 from ffmpeg's test sources (testsrc2 at 30 fps, a 440 Hz sine),
  keyframes every 2 s, 10 s long (2 s in --quick).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from PIL.TiffImagePlugin import IFDRational as R

WIDTH, HEIGHT = 1920, 1080
LARGE = (4000, 3000)
#: --quick: the smoke test needs the rows, not the 12 MP figures.
QUICK_LARGE = (1600, 1200)
VIDEO_SIZE = (1280, 720)


@dataclass(frozen=True)
class Inputs:
    photo: Path
    photo_source: str
    video: Path | None
    video_seconds: float
    #: Why there is no video (no ffmpeg), else "".
    video_problem: str = ""
    #: The large photo as JPEG and as PNG (None: not made).
    large_jpeg: Path | None = None
    large_png: Path | None = None

    def path(self, kind: str) -> Path | None:
        """The input a plugin row names: photo, large_jpeg, large_png or video."""
        found: Path | None = getattr(self, kind)
        return found

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "photo": f"{WIDTH}x{HEIGHT} JPEG q90, {self.photo.stat().st_size // 1024} KiB, "
            f"{self.photo_source}",
        }
        for kind, what in (("large_jpeg", "JPEG q92 with EXIF"), ("large_png", "PNG")):
            path = self.path(kind)
            if path is not None:
                with Image.open(path) as img:
                    size = f"{img.width}x{img.height}"
                out[kind] = f"{size} {what}, {path.stat().st_size // 1024} KiB, the photo's picture"
        if self.video is not None:
            out["video"] = (
                f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} H.264+AAC MP4, {self.video_seconds:g} s, "
                f"{self.video.stat().st_size // 1024} KiB, ffmpeg testsrc2 + sine"
            )
        else:
            out["video"] = f"none: {self.video_problem}"
        return out


def _astronaut() -> Image.Image | None:
    try:
        from skimage import data
    except ImportError:
        return None
    return Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]


def _gradient(size: tuple[int, int]) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, np.newaxis]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.broadcast_to((x + y) / 2, (height, width)),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.astype(np.uint8))


def photo_image(size: tuple[int, int] = (WIDTH, HEIGHT)) -> tuple[Image.Image, str]:
    """The picture (1920x1080 unless told) and where its content comes from."""
    width, height = size
    astronaut = _astronaut()
    if astronaut is None:
        base, source = _gradient(size), "colour gradient with noise (scikit-image not installed)"
    else:
        base = astronaut.resize(size, Image.Resampling.BICUBIC).filter(
            ImageFilter.GaussianBlur(24 * height / HEIGHT)
        )
        base.paste(astronaut.resize((height, height), Image.Resampling.LANCZOS), ((width - height) // 2, 0))
        source = f"scikit-image astronaut scaled to {height} px over a blurred copy, with noise"
    pixels = np.asarray(base, dtype=np.int16)
    noise = np.random.default_rng(7).normal(0, 4, size=pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)), source


def exif_tags() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Compute Bench"  # Make
    exif[0x0110] = "Standard Input 1080p"  # Model
    exif[0x0131] = "compute-bench"  # Software
    exif[0x0132] = "2024:05:01 12:00:00"  # DateTime
    exif[0x0112] = 1  # Orientation: upright
    sub = exif.get_ifd(0x8769)  # Exif IFD
    sub[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal
    sub[0x829A] = R(1, 250)  # ExposureTime
    sub[0x829D] = R(28, 10)  # FNumber
    sub[0x8827] = 200  # ISOSpeedRatings
    sub[0x920A] = R(50, 1)  # FocalLength
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (R(48, 1), R(51, 1), R(2400, 100))  # GPSLatitude
    gps[3], gps[4] = "E", (R(2, 1), R(21, 1), R(300, 100))  # GPSLongitude
    return exif


def write_photo(path: Path) -> str:
    image, source = photo_image()
    image.save(path, format="JPEG", quality=90, exif=exif_tags())
    return source


def write_large(jpeg: Path, png: Path, size: tuple[int, int] = LARGE) -> None:
    image, _ = photo_image(size)
    image.save(jpeg, format="JPEG", quality=92, exif=exif_tags())
    image.save(png, format="PNG")


def write_video(path: Path, seconds: float) -> str:
    """The test video; returns "" or why it could not be made."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "ffmpeg not found on PATH"
    width, height = VIDEO_SIZE
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        f"{seconds:g}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "60",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-movflags",
        "+faststart",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        return f"ffmpeg could not make the test video: {proc.stderr.strip()[-300:]}"
    return ""


def make(
    folder: Path, video_seconds: float, want_video: bool = True, large: tuple[int, int] | None = LARGE
) -> Inputs:
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "standard_1080p.jpg"
    source = write_photo(photo)
    large_jpeg = large_png = None
    if large is not None:
        large_jpeg, large_png = (
            folder / f"large_{large[0]}x{large[1]}.jpg",
            folder / f"large_{large[0]}x{large[1]}.png",
        )
        write_large(large_jpeg, large_png, large)
    video: Path | None = None
    problem = "not needed"
    if want_video:
        video = folder / f"standard_720p_{video_seconds:g}s.mp4"
        problem = write_video(video, video_seconds)
        if problem:
            video = None
    return Inputs(photo, source, video, video_seconds, problem, large_jpeg, large_png)
