"""The face_embedding task a worker runs (one job, or several through one model run)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from compute.plugins import embedding
from compute.plugins.embedding_task import EmbeddingParams, EmbeddingTask
from compute.plugins.face_embedding.algorithm import DIM, SPEC, preprocessing, quality_score


class FaceEmbeddingParams(EmbeddingParams):
    pass


class FaceEmbeddingTask(EmbeddingTask):
    name = "face_embedding"
    params = FaceEmbeddingParams
    spec = SPEC
    dim = DIM

    def preprocessing(self, session: Any) -> embedding.Preprocess:
        return preprocessing(embedding.input_layout(session))

    def measure(self, image: Image.Image) -> dict[str, Any]:
        """The crop's sharpness, on the crop as uploaded."""
        return {"quality_score": quality_score(image)}
