"""The dino_embedding task a worker runs."""

from __future__ import annotations

from typing import Any

from compute.plugins import embedding
from compute.plugins.dino_embedding.algorithm import dino_embedding, unavailable
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class DinoEmbeddingParams(TaskParams):
    normalize: bool = True


class DinoEmbeddingTask(PluginTask):
    name = "dino_embedding"
    params = DinoEmbeddingParams

    def unavailable(self) -> str | None:
        return unavailable()

    async def run(self, files: JobFiles, params: DinoEmbeddingParams, progress: Progress) -> dict[str, Any]:
        vector = dino_embedding(files.path(params.input_path), normalize=params.normalize)
        progress(90)
        embedding.save(vector, files.output(params.output_path))
        progress(100)
        return {
            "embedding_dim": int(vector.shape[0]),
            "normalized": params.normalize,
            "embedding_path": params.output_path,
        }
