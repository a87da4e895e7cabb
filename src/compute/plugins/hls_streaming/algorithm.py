"""A video to adaptive HLS with ffmpeg: probe, encode the variants in one pass, copy the original,
then check what was written."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.hls_streaming.ffmpeg_progress import run_ffmpeg
from compute.plugins.hls_streaming.ladder import Variant, fit_to_source
from compute.plugins.hls_streaming.playlists import master_playlist, media_playlist

MASTER = "adaptive.m3u8"
ORIGINAL = "adaptive-orig.m3u8"
SEGMENT_SECONDS = 2
AUDIO_KBPS = 128
#: Fast enough that a test video takes seconds; the quality loss is small at these bitrates.
X264_PRESET = "veryfast"
PROBE_TIMEOUT = 60.0
#: An encode may take this long per second of video (plus a start-up allowance): a slow,
#: busy machine manages, a stuck ffmpeg does not hold the worker forever.
ENCODE_SECONDS_PER_SECOND = 10.0
ENCODE_STARTUP = 120.0
#: When the container does not say how long the video is.
ENCODE_UNKNOWN_DURATION = 3600.0

#: Progress (percent) when each step is done.
PROBED, ENCODED, COPIED = 5, 85, 95

Progress = Callable[[int], None]


class NoVideoStream(ComputeError):
    """The file has no video stream."""


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
    try:
        duration = float((report.get("format") or {}).get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    return VideoInfo(
        int(video["index"]), width, height, any(s.get("codec_type") == "audio" for s in streams), duration
    )


async def probe(source: Path, hide: Sequence[Path] = ()) -> VideoInfo:
    out = await tools.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-of",
            "json",
            "-show_entries",
            "format=duration:stream=index,codec_type,width,height:stream_disposition=attached_pic"
            ":stream_tags=rotate:stream_side_data=rotation",
            str(source),
        ],
        timeout=PROBE_TIMEOUT,
        hide=hide,
    )
    return parse_probe(json.loads(out))


def variant_args(source: Path, info: VideoInfo, variants: Sequence[Variant]) -> list[str]:
    """ffmpeg arguments for every variant in one decode: split, scale, x264 + AAC, HLS muxer."""
    splits = "".join(f"[s{i}]" for i in range(len(variants)))
    graph = [f"[0:{info.stream}]split={len(variants)}{splits}"]
    maps: list[str] = []
    rates: list[str] = []
    streams: list[str] = []
    for i, v in enumerate(variants):
        # -2: the width that keeps the shape, rounded to even as 4:2:0 needs.
        graph.append(f"[s{i}]scale=-2:{v.resolution},format=yuv420p[v{i}]")
        maps += ["-map", f"[v{i}]"]
        if info.has_audio:
            maps += ["-map", "0:a:0"]  # upstream maps audio unconditionally and fails without it
        rates += [
            f"-b:v:{i}",
            f"{v.bitrate}k",
            f"-maxrate:v:{i}",
            f"{v.bitrate}k",
            f"-bufsize:v:{i}",
            f"{2 * v.bitrate}k",
        ]
        streams.append(f"v:{i},a:{i},name:{v.name}" if info.has_audio else f"v:{i},name:{v.name}")
    audio = ["-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2"] if info.has_audio else []
    return [
        "-y",
        "-i",
        str(source),
        "-filter_complex",
        ";".join(graph),
        *maps,
        "-c:v",
        "libx264",
        "-preset",
        X264_PRESET,
        *rates,
        # A keyframe every 2 s whatever the frame rate, none elsewhere: segments cut evenly.
        "-force_key_frames",
        f"expr:gte(t,n_forced*{SEGMENT_SECONDS})",
        "-sc_threshold",
        "0",
        *audio,
        *_hls_options("adaptive-%v-%03d.ts"),
        "-master_pl_name",
        MASTER,
        "-var_stream_map",
        " ".join(streams),
        "adaptive-%v.m3u8",
    ]


def original_args(source: Path, info: VideoInfo) -> list[str]:
    """ffmpeg arguments for the original streams, copied (not re-encoded) into HLS."""
    return [
        "-y",
        "-i",
        str(source),
        "-map",
        f"0:{info.stream}",
        "-map",
        "0:a:0?",
        "-c",
        "copy",
        *_hls_options("adaptive-orig-%03d.ts"),
        ORIGINAL,
    ]


def _hls_options(segment_template: str) -> list[str]:
    return [
        "-f",
        "hls",
        "-hls_time",
        str(SEGMENT_SECONDS),
        "-hls_playlist_type",
        "vod",
        "-hls_list_size",
        "0",
        "-hls_segment_filename",
        segment_template,
    ]


def encode_timeout(duration: float) -> float:
    per_video = duration * ENCODE_SECONDS_PER_SECOND if duration > 0 else ENCODE_UNKNOWN_DURATION
    return ENCODE_STARTUP + per_video


@dataclass(frozen=True)
class HlsResult:
    info: VideoInfo
    variants: list[Variant]
    #: Segments of all variants in the master playlist (the original's not counted, as upstream).
    total_segments: int
    original: bool


class TooSlow(ComputeError):
    """ffmpeg did not finish in time."""


async def make_hls(
    source: Path,
    folder: Path,
    requested: Sequence[Variant],
    include_original: bool,
    progress: Progress,
    hide: Sequence[Path] = (),
) -> HlsResult:
    """Write `adaptive.m3u8` and its variants (and `adaptive-orig.m3u8`) into `folder`, checked."""
    try:
        info = await probe(source, hide)
    except TimeoutError:
        raise TooSlow(f"ffprobe did not finish within {PROBE_TIMEOUT:g} s") from None
    variants = fit_to_source(list(requested), info.height)
    progress(PROBED)

    def between(start: int, end: int) -> Callable[[float], None]:
        def report(seconds: float) -> None:
            if info.duration > 0:
                progress(start + int((end - start) * min(1.0, seconds / info.duration)))

        return report

    timeout = encode_timeout(info.duration)
    try:
        await run_ffmpeg(
            variant_args(source, info, variants),
            cwd=folder,
            timeout=timeout,
            on_seconds=between(PROBED, ENCODED),
            hide=hide,
        )
        progress(ENCODED)
        if include_original:
            try:
                await run_ffmpeg(
                    original_args(source, info),
                    cwd=folder,
                    timeout=timeout,
                    on_seconds=between(ENCODED, COPIED),
                    hide=hide,
                )
            except tools.ToolFailed as exc:  # e.g. a codec MPEG-TS cannot carry: say which step
                raise tools.ToolFailed(f"copying the original (include_original): {exc}") from None
            media_playlist(folder, ORIGINAL)
    except TimeoutError:
        raise TooSlow(f"ffmpeg did not finish within {timeout:g} s") from None
    progress(COPIED)
    listed = master_playlist(folder, MASTER)
    return HlsResult(info, variants, sum(len(p.segments) for p in listed), include_original)
