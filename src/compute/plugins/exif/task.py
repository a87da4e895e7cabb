"""The exif task a worker runs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from compute.plugins import tools
from compute.plugins.environment import current
from compute.plugins.exif.algorithm import EXIFTOOL, metadata_output, read_tags
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class ExifParams(TaskParams):
    #: ExifTool tag names to return; empty: all of them.
    tags: list[str] = Field(default_factory=list)


class ExifTask(PluginTask):
    name = "exif"
    params = ExifParams

    def unavailable(self) -> str | None:
        return tools.missing(EXIFTOOL)

    async def run(self, files: JobFiles, params: ExifParams, progress: Progress) -> dict[str, Any]:
        reason = self.unavailable()
        if reason is not None:  # removed since the worker started: fail the job, do not retry it
            raise tools.ToolFailed(reason)
        hide = [files.root, current().storage_dir]
        metadata = await read_tags(files.path(params.input_path), hide, params.tags)
        progress(50)
        output = metadata_output(metadata, params.tags)
        files.output(params.output_path).write_text(json.dumps(output, indent=2))
        progress(100)
        return output
