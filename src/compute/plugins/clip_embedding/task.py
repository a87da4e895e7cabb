"""The clip_embedding task a worker runs (one job, or several through one model run)."""

from __future__ import annotations

from typing import Any

from compute.plugins import embedding
from compute.plugins.clip_embedding.algorithm import DIM, PREPROCESS, SPEC
from compute.plugins.embedding_task import EmbeddingParams, EmbeddingTask


class ClipEmbeddingParams(EmbeddingParams):
    pass


class ClipEmbeddingTask(EmbeddingTask):
    name = "clip_embedding"
    params = ClipEmbeddingParams
    spec = SPEC
    dim = DIM

    def preprocessing(self, session: Any) -> embedding.Preprocess:
        return PREPROCESS
