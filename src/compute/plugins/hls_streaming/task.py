"""The hls_streaming task a worker runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.environment import current
from compute.plugins.hls_streaming.algorithm import MASTER, make_hls
from compute.plugins.hls_streaming.ladder import BadVariants, parse_variants
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams

#: Where the HLS goes when the client names no folder (upstream's `output_path`).
OUTPUT_FOLDER = "output"


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


def inside_media_roots(raw: str, what: str) -> Path:
    """`raw` resolved, if it lies in this process's media roots. The route checked it already;
    the worker checks again, as its own roots are the ones that count on its disk."""
    path = Path(raw).resolve()
    if not any(path == root or root in path.parents for root in current().media_roots):
        raise ComputeError(f"{what} is outside the media roots this worker may use (COMPUTE_MEDIA_ROOTS)")
    return path


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
        if params.input_absolute_path:
            source = inside_media_roots(params.input_absolute_path, "input_absolute_path")
            if not source.is_file():
                raise ComputeError("input_absolute_path: no file at that path")
        else:
            source = files.path(params.input_path)
        if params.output_absolute_path:
            folder = inside_media_roots(params.output_absolute_path, "output_absolute_path")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # e.g. no permission: retrying would not help
                raise ComputeError(f"output_absolute_path cannot be created: {exc.strerror}") from None
        else:
            folder = files.output(f"{params.output_path or OUTPUT_FOLDER}/{MASTER}").parent

        def named(file_name: str) -> str:
            """How the client finds a file: job-relative in the job folder, else folder-relative."""
            return file_name if params.output_absolute_path else files.relative(folder / file_name)

        result = await make_hls(
            source,
            folder,
            requested,
            params.include_original,
            progress,
            hide=[files.root, *current().media_roots],
        )
        playlists = [{**v.as_dict(), "playlist": named(f"adaptive-{v.name}.m3u8")} for v in result.variants]
        return {
            "master_playlist": named(MASTER),
            "variants_generated": len(result.variants),
            "variants": playlists,
            "total_segments": result.total_segments,
            "include_original": result.original,
            "duration_seconds": round(result.info.duration, 3),
        }
