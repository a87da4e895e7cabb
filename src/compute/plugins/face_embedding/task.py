"""The face_embedding task a worker runs."""

from __future__ import annotations

from typing import Any

from compute.plugins import embedding
from compute.plugins.face_embedding.algorithm import face_embedding, unavailable
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams


class FaceEmbeddingParams(TaskParams):
    normalize: bool = True


class FaceEmbeddingTask(PluginTask):
    name = "face_embedding"
    params = FaceEmbeddingParams

    def unavailable(self) -> str | None:
        return unavailable()

    async def run(self, files: JobFiles, params: FaceEmbeddingParams, progress: Progress) -> dict[str, Any]:
        face = face_embedding(files.path(params.input_path), normalize=params.normalize)
        progress(90)
        embedding.save(face.vector, files.output(params.output_path))
        progress(100)
        return {
            "embedding_dim": int(face.vector.shape[0]),
            "normalized": params.normalize,
            "quality_score": face.quality_score,
            "embedding_path": params.output_path,
        }
