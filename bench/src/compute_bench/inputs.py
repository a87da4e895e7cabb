"""The plugins section's standard inputs, made by the benchmark into its own temporary folder.

* a 1920x1080 JPEG with photo-like content: scikit-image's astronaut (a real photograph, NASA,
  public domain) scaled to 1080 px high over a blurred, widened copy of itself, with a little
  sensor-like noise, and EXIF tags written with Pillow (camera, exposure, date, GPS) so that
  `exif` has something to read. Without scikit-image: a colour gradient with noise.
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
VIDEO_SIZE = (1280, 720)


@dataclass(frozen=True)
class Inputs:
    photo: Path
    photo_source: str
    video: Path | None
    video_seconds: float
    #: Why there is no video (no ffmpeg), else "".
    video_problem: str = ""

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "photo": f"{WIDTH}x{HEIGHT} JPEG q90, {self.photo.stat().st_size // 1024} KiB, "
            f"{self.photo_source}",
        }
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


def _gradient() -> Image.Image:
    x = np.linspace(0, 255, WIDTH, dtype=np.float32)[np.newaxis, :]
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, np.newaxis]
    rgb = np.stack(
        [
            np.broadcast_to(x, (HEIGHT, WIDTH)),
            np.broadcast_to(y, (HEIGHT, WIDTH)),
            np.broadcast_to((x + y) / 2, (HEIGHT, WIDTH)),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.astype(np.uint8))


def photo_image() -> tuple[Image.Image, str]:
    """The 1920x1080 picture and where its content comes from."""
    astronaut = _astronaut()
    if astronaut is None:
        base, source = _gradient(), "colour gradient with noise (scikit-image not installed)"
    else:
        base = astronaut.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC).filter(
            ImageFilter.GaussianBlur(24)
        )
        base.paste(astronaut.resize((HEIGHT, HEIGHT), Image.Resampling.LANCZOS), ((WIDTH - HEIGHT) // 2, 0))
        source = "scikit-image astronaut scaled to 1080 px over a blurred copy, with noise"
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


def make(folder: Path, video_seconds: float, want_video: bool = True) -> Inputs:
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "standard_1080p.jpg"
    source = write_photo(photo)
    video: Path | None = None
    problem = "not needed"
    if want_video:
        video = folder / f"standard_720p_{video_seconds:g}s.mp4"
        problem = write_video(video, video_seconds)
        if problem:
            video = None
    return Inputs(photo, source, video, video_seconds, problem)
