"""The image_conversion task a worker runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compute.plugins.image_conversion.algorithm import convert
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams

Format = Literal["png", "jpg", "jpeg", "webp", "gif", "bmp", "tiff"]


class ImageConversionParams(TaskParams):
    format: Format
    quality: int = Field(85, ge=1, le=100)


class ImageConversionTask(PluginTask):
    name = "image_conversion"
    params = ImageConversionParams

    async def run(self, files: JobFiles, params: ImageConversionParams, progress: Progress) -> dict[str, Any]:
        convert(
            files.path(params.input_path), files.output(params.output_path), params.format, params.quality
        )
        progress(100)
        return {"output_path": params.output_path, "format": params.format, "quality": params.quality}
