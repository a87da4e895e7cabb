"""The hls_streaming task a worker runs.

The video is opened once, then handed to the tools by descriptor. An `output_absolute_path`
folder (someone else's) is opened once too, and ffmpeg writes into a staging folder inside
the job's own; the files are placed into the checked folder through its descriptor
(media_paths.place), never through a path string that could have been swapped meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from compute.errors import ComputeError
from compute.plugins import media_paths, tools
from compute.plugins.environment import current
from compute.plugins.hls_streaming.algorithm import MASTER, X264_PRESET, X264_PRESETS, make_hls
from compute.plugins.hls_streaming.ladder import BadVariants, parse_variants
from compute.plugins.media import VIDEOS, sniff_fd
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams
from compute.plugins.video_probe import Source

#: Where the HLS goes when the client names no folder (upstream's `output_path`).
OUTPUT_FOLDER = "output"
#: The job's own folder where ffmpeg writes HLS bound for `output_absolute_path`.
STAGING_FOLDER = "staging"


def default_variants() -> list[dict[str, int]]:
    return [v.as_dict() for v in parse_variants(None)]


class HlsStreamingParams(TaskParams):
    #: [{"resolution": 720, "bitrate": 3500}, ...] as the route checked them.
    variants: list[dict[str, int]] = Field(default_factory=default_variants)
    include_original: bool = True
    #: A video on the worker's disk instead of an upload (inside COMPUTE_MEDIA_ROOTS).
    input_absolute_path: str | None = None
    #: A folder on the worker's disk for the HLS instead of the job's `output/`.
    output_absolute_path: str | None = None
    #: x264's preset: the default, or a faster one (X264_PRESETS) for a lower quality.
    preset: str = X264_PRESET


class HlsStreamingTask(PluginTask):
    name = "hls_streaming"
    params = HlsStreamingParams

    def unavailable(self) -> str | None:
        return tools.missing("ffmpeg", "ffprobe")

    async def run(self, files: JobFiles, params: HlsStreamingParams, progress: Progress) -> dict[str, Any]:
        try:
            requested = parse_variants(json.dumps(params.variants))
        except BadVariants as exc:
            raise ComputeError(str(exc)) from None
        if params.preset not in X264_PRESETS:
            raise ComputeError(f"preset must be one of {', '.join(X264_PRESETS)}")
        hide = [files.root, *current().media_roots]
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(_open_source(files, params))
            if params.output_absolute_path:
                with _explained():
                    opened = media_paths.open_folder(
                        params.output_absolute_path, "output_absolute_path", create=True
                    )
                target = stack.enter_context(opened)
                folder = files.root / STAGING_FOLDER
                shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt's
                folder.mkdir()
                stack.callback(shutil.rmtree, folder, True)
            else:
                folder = files.output(f"{params.output_path or OUTPUT_FOLDER}/{MASTER}").parent
            result = await make_hls(
                Source(source.fd, _shown(params, files)),
                folder,
                requested,
                params.include_original,
                progress,
                hide=hide,
                preset=params.preset,
            )
            if params.output_absolute_path:
                media_paths.place(folder, _in_order(folder), target.fd)

        def named(file_name: str) -> str:
            """How the client finds a file: job-relative in the job folder, else folder-relative."""
            return file_name if params.output_absolute_path else files.relative(folder / file_name)

        playlists = [{**v.as_dict(), "playlist": named(f"adaptive-{v.name}.m3u8")} for v in result.variants]
        return {
            "master_playlist": named(MASTER),
            "variants_generated": len(result.variants),
            "variants": playlists,
            "total_segments": result.total_segments,
            "include_original": result.original,
            "duration_seconds": round(result.info.duration, 3),
        }


@contextlib.contextmanager
def _explained() -> Iterator[None]:
    """An absolute path that fails on a worker without the server's disk says why it may: the
    client named a path on the server's machine, which this worker sees only where it mounts it."""
    try:
        yield
    except media_paths.MediaPathError as exc:
        if current().shares_server_disk:
            raise
        raise ComputeError(
            f"{exc}; the path names a file on the server's machine, and this worker does not share "
            "its disk: mount that folder here and list it in this worker's COMPUTE_MEDIA_ROOTS, or "
            "upload the file instead"
        ) from None


def _open_source(files: JobFiles, params: HlsStreamingParams) -> media_paths.Opened:
    """The video, open and checked: a video file inside the media roots, or the job's upload."""
    if params.input_absolute_path:
        with _explained():
            opened = media_paths.open_file(params.input_absolute_path, "input_absolute_path")
    else:
        path = files.path(params.input_path)  # the job's own folder: only the server writes there
        try:
            opened = media_paths.Opened(os.open(path, os.O_RDONLY | os.O_CLOEXEC), path)
        except OSError as exc:
            raise ComputeError(f"the job's input cannot be opened: {os.strerror(exc.errno or 0)}") from None
    kind = sniff_fd(opened.fd)
    if kind not in VIDEOS:  # the route looked at it, but the file at that path may have changed since
        opened.close()
        raise ComputeError(f"{_shown(params, files)} is not a video this task reads")
    return opened


def _shown(params: HlsStreamingParams, files: JobFiles) -> str:
    if params.input_absolute_path:
        return tools.scrub(params.input_absolute_path, current().media_roots)
    return params.input_path


def _in_order(folder: Path) -> list[str]:
    """The files ffmpeg wrote, in the order a reader may meet them: segments, media playlists,
    the master last (a player that finds it finds everything it lists)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    return sorted(names, key=lambda n: (n == MASTER, n.endswith(".m3u8")))
