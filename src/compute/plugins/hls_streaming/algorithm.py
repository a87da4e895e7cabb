"""A video to adaptive HLS with ffmpeg: probe, then one ffmpeg that encodes the variants from one
decode and copies the original beside them, then check what was written.

The video is handed over open (`Source`): ffprobe and ffmpeg read it as `/dev/fd/N`, so they
read the file that was checked, whatever happens to its path meanwhile (media_paths.py). The
probe checks the video limits again, and ffmpeg decodes with them (video_probe.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.hls_streaming.ffmpeg_progress import run_ffmpeg
from compute.plugins.hls_streaming.ladder import Variant, fit_to_source
from compute.plugins.hls_streaming.playlists import master_playlist, media_playlist
from compute.plugins.video_probe import INPUT_PROTOCOLS, Source, VideoInfo, limit_options, probe, too_large

MASTER = "adaptive.m3u8"
ORIGINAL = "adaptive-orig.m3u8"
SEGMENT_SECONDS = 2
AUDIO_KBPS = 128
#: Fast enough that a test video takes seconds; the quality loss is small at these bitrates.
X264_PRESET = "veryfast"
#: The presets a job may ask for instead (`preset`), slowest first; their cost and quality
#: against the default are measured in docs/performance.md (hls_streaming).
X264_PRESETS = ("veryfast", "superfast", "ultrafast")
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


def encode_args(
    source: Source, info: VideoInfo, variants: Sequence[Variant], include_original: bool, preset: str
) -> list[str]:
    """ffmpeg arguments for one run: every variant from one decode (split, scale, x264 + AAC, HLS
    muxer), and with `include_original` a second output, the original streams copied into HLS."""
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
    variants_output = [
        "-filter_complex",
        ";".join(graph),
        *maps,
        "-c:v",
        "libx264",
        "-preset",
        preset,
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
    original_output = [
        "-map",
        f"0:{info.stream}",
        "-map",
        "0:a:0?",
        "-c",
        "copy",
        *_hls_options("adaptive-orig-%03d.ts"),
        ORIGINAL,
    ]
    source_input = [*limit_options(), "-protocol_whitelist", INPUT_PROTOCOLS, "-i", source.path]
    return ["-y", *source_input, *variants_output, *(original_output if include_original else [])]


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
    source: Source,
    folder: Path,
    requested: Sequence[Variant],
    include_original: bool,
    progress: Progress,
    hide: Sequence[Path] = (),
    preset: str = X264_PRESET,
) -> HlsResult:
    """Write `adaptive.m3u8` and its variants (and `adaptive-orig.m3u8`) into `folder`, checked."""
    if preset not in X264_PRESETS:
        raise ComputeError(f"preset must be one of {', '.join(X264_PRESETS)}")
    info = await probe(source, timeout=PROBE_TIMEOUT, hide=hide)  # within the video limits
    variants = fit_to_source(list(requested), info.height)
    progress(PROBED)

    def report(seconds: float) -> None:
        if info.duration > 0:
            progress(PROBED + int((ENCODED - PROBED) * min(1.0, seconds / info.duration)))

    timeout = encode_timeout(info.duration)
    try:
        await run_ffmpeg(
            encode_args(source, info, variants, include_original, preset),
            cwd=folder,
            timeout=timeout,
            on_seconds=report,
            hide=hide,
            pass_fds=[source.fd],
            names=source.names,
        )
    except TimeoutError:
        raise TooSlow(f"ffmpeg did not finish within {timeout:g} s") from None
    except tools.ToolFailed as exc:
        limit = too_large(exc)  # a frame past the limit the probe did not see
        if limit is not None:
            raise limit from None
        if include_original and _ORIGINAL_OUTPUT in str(exc):  # e.g. a codec MPEG-TS cannot carry
            raise tools.ToolFailed(f"copying the original (include_original): {exc}") from None
        raise
    progress(ENCODED)
    if include_original:
        media_playlist(folder, ORIGINAL)
    progress(COPIED)
    listed = master_playlist(folder, MASTER)
    return HlsResult(info, variants, sum(len(p.segments) for p in listed), include_original)


#: How ffmpeg names the original's output (the second) when it fails on it.
_ORIGINAL_OUTPUT = "output file #1"
