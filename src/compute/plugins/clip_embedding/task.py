"""The clip_embedding task a worker runs."""

from __future__ import annotations

from typing import Any

from compute.plugins import embedding
from compute.plugins.clip_embedding.algorithm import clip_embedding, unavailable
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class ClipEmbeddingParams(TaskParams):
    normalize: bool = True


class ClipEmbeddingTask(PluginTask):
    name = "clip_embedding"
    params = ClipEmbeddingParams

    def unavailable(self) -> str | None:
        return unavailable()

    async def run(self, files: JobFiles, params: ClipEmbeddingParams, progress: Progress) -> dict[str, Any]:
        vector = clip_embedding(files.path(params.input_path), normalize=params.normalize)
        progress(90)
        embedding.save(vector, files.output(params.output_path))
        progress(100)
        return {
            "embedding_dim": int(vector.shape[0]),
            "normalized": params.normalize,
            "embedding_path": params.output_path,
        }
