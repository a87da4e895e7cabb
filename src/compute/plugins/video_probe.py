"""What a video is (ffprobe on the open file) and whether it is within the video limits.

A video's header is as much the uploader's as an image's: a 301 KB file can declare
10240x10240 frames (ffmpeg then took 1.19 GB to decode them), a day of duration or a thousand
streams. The limits (MAX_VIDEO_PIXELS per frame, MAX_VIDEO_SECONDS, MAX_VIDEO_STREAMS) are
checked at intake for the tasks that decode frames, and again by the worker before it decodes.

ffprobe itself decodes a frame or two to learn the stream parameters, so it runs with the limits
as ffmpeg options (`-max_pixels`, `-max_streams`): a file past them is refused before a frame
that size is allocated, and the reason is read back from ffprobe's words. ffmpeg gets the same
options (`limit_options`), so a decode past them fails however the file got there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.environment import current
from compute.plugins.media_paths import fd_path

#: Only local files: a container that names other resources (URLs) cannot make ffmpeg fetch them.
INPUT_PROTOCOLS = "file"

_PIXELS_SAID = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")
_STREAMS_SAID = "exceeds max_streams"


class NoVideoStream(ComputeError):
    """The file has no video stream."""


class VideoTooLarge(ComputeError):
    """The video is past MAX_VIDEO_PIXELS, MAX_VIDEO_SECONDS or MAX_VIDEO_STREAMS."""


class VideoUnreadable(tools.ToolFailed):
    """ffprobe cannot read the video."""


@dataclass(frozen=True)
class Source:
    """A video, open: ffprobe and ffmpeg inherit `fd` and read it as `/dev/fd/<fd>`."""

    fd: int
    #: How error messages name it (`input/upload.mp4`, or the path the client gave).
    shown: str

    @property
    def path(self) -> str:
        return fd_path(self.fd)

    @property
    def names(self) -> dict[str, str]:
        return {self.path: self.shown}


@dataclass(frozen=True)
class VideoInfo:
    #: The video stream's index in the file (not a cover picture).
    stream: int
    #: As shown, with the rotation a phone records applied.
    width: int
    height: int
    has_audio: bool
    #: Seconds; 0.0 when the container does not say.
    duration: float
    #: Streams in the file, of every kind.
    streams: int = 1


def limit_options() -> list[str]:
    """ffmpeg/ffprobe input options that refuse frames and stream counts past the limits."""
    env = current()
    return ["-max_pixels", str(env.max_video_pixels), "-max_streams", str(env.max_video_streams)]


async def probe(source: Source, *, timeout: float, hide: Sequence[Path] = ()) -> VideoInfo:
    """The video's first stream, size, audio, duration and stream count, within the limits:
    VideoTooLarge past one, VideoUnreadable when ffprobe cannot read it, NoVideoStream."""
    try:
        out = await tools.run(
            [
                "ffprobe",
                "-v",
                "error",
                *limit_options(),
                "-protocol_whitelist",
                INPUT_PROTOCOLS,
                "-of",
                "json",
                "-show_entries",
                "format=duration,nb_streams:stream=index,codec_type,width,height"
                ":stream_disposition=attached_pic:stream_tags=rotate:stream_side_data=rotation",
                source.path,
            ],
            timeout=timeout,
            hide=hide,
            pass_fds=[source.fd],
            names=source.names,
        )
    except tools.ToolTimedOut:
        raise VideoUnreadable(f"ffprobe did not finish within {timeout:g} s") from None
    except tools.ToolFailed as exc:
        raise (too_large(exc) or VideoUnreadable(str(exc))) from None
    try:
        report = json.loads(out)
    except ValueError:
        raise VideoUnreadable("ffprobe's report could not be read") from None
    info = parse_probe(report if isinstance(report, dict) else {})
    check(info)
    return info


def too_large(failure: tools.ToolFailed) -> VideoTooLarge | None:
    """The limit an ffmpeg/ffprobe failure was about (it refused a frame or the streams), if any."""
    said = failure.stderr.decode(errors="replace")
    env = current()
    pixels = _PIXELS_SAID.search(said)
    if pixels:
        return _pixels_error(int(pixels.group(1)), int(pixels.group(2)))
    if _STREAMS_SAID in said:
        return VideoTooLarge(f"the video has more than {env.max_video_streams} streams (MAX_VIDEO_STREAMS)")
    return None


def check(info: VideoInfo) -> None:
    """VideoTooLarge if `info` is past a limit."""
    env = current()
    if info.width * info.height > env.max_video_pixels:
        raise _pixels_error(info.width, info.height)
    if info.duration > env.max_video_seconds:
        raise VideoTooLarge(
            f"the video lasts {info.duration:g} s, longer than the limit of "
            f"{env.max_video_seconds} s (MAX_VIDEO_SECONDS)"
        )
    if info.streams > env.max_video_streams:
        raise VideoTooLarge(
            f"the video has {info.streams} streams, more than {env.max_video_streams} (MAX_VIDEO_STREAMS)"
        )


def _pixels_error(width: int, height: int) -> VideoTooLarge:
    return VideoTooLarge(
        f"video frames of {width}x{height} = {width * height} pixels exceed the limit of "
        f"{current().max_video_pixels} (MAX_VIDEO_PIXELS)"
    )


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if isinstance(side, dict) and "rotation" in side:
            return int(float(side["rotation"]))
    rotate = (stream.get("tags") or {}).get("rotate")
    return int(float(rotate)) if rotate else 0


def parse_probe(report: dict[str, Any]) -> VideoInfo:
    """ffprobe's JSON (see `probe`) as VideoInfo."""
    streams = [s for s in report.get("streams") or [] if isinstance(s, dict)]
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video"
        and not (s.get("disposition") or {}).get("attached_pic")
        and s.get("width")
        and s.get("height")
    ]
    if not videos:
        raise NoVideoStream()
    video = videos[0]
    width, height = int(video["width"]), int(video["height"])
    if abs(_rotation(video)) % 180 == 90:
        width, height = height, width
    container = report.get("format") or {}
    try:
        duration = float(container.get("duration") or 0.0)
    except (TypeError, ValueError):
        duration = 0.0
    if not math.isfinite(duration) or duration < 0:  # not said in a usable way: unknown
        duration = 0.0
    try:
        count = int(container.get("nb_streams") or len(streams))
    except (TypeError, ValueError):
        count = len(streams)
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return VideoInfo(int(video["index"]), width, height, has_audio, duration, count)
