"""The dino_embedding task a worker runs (one job, or several through one model run)."""

from __future__ import annotations

from typing import Any

from compute.plugins import embedding
from compute.plugins.dino_embedding.algorithm import DIM, PREPROCESS, SPEC
from compute.plugins.embedding_task import EmbeddingParams, EmbeddingTask


class DinoEmbeddingParams(EmbeddingParams):
    pass


class DinoEmbeddingTask(EmbeddingTask):
    name = "dino_embedding"
    params = DinoEmbeddingParams
    spec = SPEC
    dim = DIM
    cls_token = True

    def preprocessing(self, session: Any) -> embedding.Preprocess:
        return PREPROCESS
