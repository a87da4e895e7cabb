"""The task side of clip_embedding, dino_embedding and face_embedding: one job, or several jobs
through one model run.

Each job's image is decoded and pre-processed on its own (a file that does not decode fails its
own job only), the tensors of the jobs that got that far go through the model together
(`embedding.vectors`: one run when the model takes a batch), and each vector is normalised,
saved and described on its own. A job alone goes the same way, as a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from compute.plugins import embedding, models
from compute.plugins.media import open_image
from compute.plugins.models import ModelSpec, ModelUnavailable
from compute.plugins.plugin_task import BatchJob, JobFiles, Outcome, PluginTask, Progress, TaskParams


class EmbeddingParams(TaskParams):
    normalize: bool = True


class EmbeddingTask(PluginTask):
    """Base of the embedding tasks: set the model (`spec`, `dim`, `cls_token`), `preprocessing`
    and, for fields measured on the image itself, `measure`."""

    spec: ClassVar[ModelSpec]
    #: The embedding's length.
    dim: ClassVar[int]
    #: The model gives a token sequence whose first row is the embedding (DINOv2).
    cls_token: ClassVar[bool] = False

    def preprocessing(self, session: Any) -> embedding.Preprocess:
        """How this task's images become the input of `session`'s model."""
        raise NotImplementedError

    def measure(self, _image: Image.Image) -> dict[str, Any]:
        """task_output fields measured on the image as uploaded (before the model's resize)."""
        return {}

    def unavailable(self) -> str | None:
        return embedding.model_problem(self.spec, self.dim, cls_token=self.cls_token)

    def batchable(self) -> bool:
        try:
            return models.takes_batches(models.session(self.spec))
        except ModelUnavailable:
            return False

    async def run(self, files: JobFiles, params: EmbeddingParams, progress: Progress) -> dict[str, Any]:
        (outcome,) = self._embed([BatchJob(files, params, progress)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def run_batch(self, jobs: Sequence[BatchJob]) -> list[Outcome]:
        return self._embed(jobs)

    def _embed(self, jobs: Sequence[BatchJob]) -> list[Outcome]:
        try:
            session = models.session(self.spec)  # a missing model fails the jobs before any decode
        except ModelUnavailable as exc:
            return [exc for _ in jobs]
        prep = self.preprocessing(session)
        size = embedding.input_size(session, prep)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        loaded: dict[int, tuple[embedding.Vector, dict[str, Any]]] = {}
        for index, job in enumerate(jobs):
            try:
                loaded[index] = self._load(job, prep, size)
            except Exception as exc:  # MemoryError included: the plugin process reports it
                outcomes[index] = exc
        indices = list(loaded)
        tensors = [loaded[i][0] for i in indices]
        found = embedding.vectors(self.spec, tensors, self.dim, cls_token=self.cls_token)
        for index, vector in zip(indices, found, strict=True):
            if isinstance(vector, Exception):
                outcomes[index] = vector
            else:
                outcomes[index] = self._finish(jobs[index], vector, loaded[index][1])
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(jobs)
        return done

    def _load(
        self, job: BatchJob, prep: embedding.Preprocess, size: tuple[int, int]
    ) -> tuple[embedding.Vector, dict[str, Any]]:
        """The job's input tensor and measured fields; its decoded image is dropped here, so a
        batch holds tensors, not full-size images."""
        image = open_image(job.files.path(job.params.input_path), "RGB")
        return embedding.to_tensor(image, prep, size), self.measure(image)

    def _finish(self, job: BatchJob, vector: embedding.Vector, measured: dict[str, Any]) -> Outcome:
        job.progress(90)
        params = job.params
        try:
            final = embedding.l2_normalise(vector) if params.normalize else vector
            embedding.save(final, job.files.output(params.output_path))
        except Exception as exc:
            return exc
        job.progress(100)
        return {
            "embedding_dim": int(final.shape[0]),
            "normalized": params.normalize,
            **measured,
            "embedding_path": params.output_path,
        }
