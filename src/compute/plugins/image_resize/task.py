"""The image_resize task a worker runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compute.plugins.image_resize.algorithm import resize
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class ImageResizeParams(TaskParams):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    #: True: fit inside width x height, keeping the shape; False: exactly width x height.
    maintain_aspect_ratio: bool = False


class ImageResizeTask(PluginTask):
    name = "image_resize"
    params = ImageResizeParams

    async def run(self, files: JobFiles, params: ImageResizeParams, progress: Progress) -> dict[str, Any]:
        width, height = resize(
            files.path(params.input_path),
            files.output(params.output_path),
            params.width,
            params.height,
            params.maintain_aspect_ratio,
            on_decoded=lambda: progress(50),
        )
        progress(100)
        return {"output_path": params.output_path, "width": width, "height": height}
