"""The media_thumbnail task a worker runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.media import sniff
from compute.plugins.media_thumbnail.algorithm import (
    DEFAULT_SIZE,
    FFMPEG_TIMEOUT,
    Box,
    image_thumbnail,
    picture_size,
    video_thumbnail,
)
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class MediaThumbnailParams(TaskParams):
    width: int = Field(DEFAULT_SIZE, gt=0)
    height: int = Field(DEFAULT_SIZE, gt=0)
    maintain_aspect_ratio: bool = True


class MediaThumbnailTask(PluginTask):
    name = "media_thumbnail"
    params = MediaThumbnailParams

    def unavailable(self) -> str | None:
        return tools.missing("ffmpeg", "ffprobe")

    async def run(self, files: JobFiles, params: MediaThumbnailParams, progress: Progress) -> dict[str, Any]:
        source = files.path(params.input_path)
        target = files.output(params.output_path)
        box = Box(params.width, params.height, params.maintain_aspect_ratio)
        kind = sniff(source)
        if kind is None:
            raise ComputeError("the input is neither an image nor a video this task reads")
        progress(10)
        if kind.family == "image":
            written = image_thumbnail(source, target, box)
        else:
            try:
                written = await video_thumbnail(source, target, box, hide=[files.root])
            except TimeoutError:
                raise ComputeError(f"ffmpeg did not finish within {FFMPEG_TIMEOUT:g} s") from None
        width, height = picture_size(written)
        progress(100)
        return {
            "thumbnail_path": files.relative(written),
            "media_type": kind.family,
            "width": width,
            "height": height,
        }
