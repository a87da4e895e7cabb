"""Embedding jobs handed over together: one model run for the batch when the model takes one, and
each job's outcome what it would be alone, its failures its own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cl_ml_tools import Job
from skimage import data

from compute.plugins import models
from compute.plugins.clip_embedding.task import ClipEmbeddingTask
from compute.plugins.dino_embedding.task import DinoEmbeddingTask
from compute.plugins.embedding_task import EmbeddingTask
from compute.plugins.environment import current
from compute.plugins.face_embedding.task import FaceEmbeddingTask
from compute_bench import onnx_models
from tests.support.embedding_images import jpeg_bytes


@dataclass(frozen=True)
class Model:
    name: str
    task: type[EmbeddingTask]
    #: Writes the stand-in into the models folder, with the given keyword arguments.
    write: Callable[..., onnx_models.TinyEmbedder]


MODELS = [
    Model("clip", ClipEmbeddingTask, onnx_models.clip),
    Model("dino", DinoEmbeddingTask, onnx_models.dino),
    Model("arcface-nhwc", FaceEmbeddingTask, lambda d, **kw: onnx_models.arcface(d, layout="NHWC", **kw)),
    Model("arcface-nchw", FaceEmbeddingTask, lambda d, **kw: onnx_models.arcface(d, layout="NCHW", **kw)),
]
by_model = pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Five different real photos of different sizes (one greyscale)."""
    return [
        jpeg_bytes(data.astronaut()),  # type: ignore[no-untyped-call]
        jpeg_bytes(data.coffee()),  # type: ignore[no-untyped-call]
        jpeg_bytes(data.chelsea()),  # type: ignore[no-untyped-call]
        jpeg_bytes(np.stack([data.camera()] * 3, axis=-1)),  # type: ignore[no-untyped-call]
        jpeg_bytes(data.rocket()),  # type: ignore[no-untyped-call]
    ]


class CountingSession:
    """The real session, recording the batch size of every run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def run(self, names: Any, feeds: dict[str, Any]) -> Any:
        self.batches.append(int(next(iter(feeds.values())).shape[0]))
        return self.inner.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Callable[[EmbeddingTask], CountingSession]:
    """Counts the runs of a task's model session from now on."""

    def install(task: EmbeddingTask) -> CountingSession:
        counter = CountingSession(models.session(task.spec))
        real = models.session
        monkeypatch.setattr(models, "session", lambda spec: counter if spec == task.spec else real(spec))
        return counter

    return install


def new_job(task: EmbeddingTask, content: bytes | None, normalize: bool = True) -> tuple[Job, Any]:
    """A job folder with `content` as its upload (None: the upload is a folder), and its params."""
    job_id = str(uuid.uuid4())
    upload = current().job_dir(job_id) / "input" / "upload.jpg"
    if content is None:
        upload.mkdir(parents=True)
    else:
        upload.parent.mkdir(parents=True)
        upload.write_bytes(content)
    params = task.params(
        input_path="input/upload.jpg", output_path=f"output/{task.name}.npy", normalize=normalize
    )
    return Job(job_id=job_id, task_type=task.name, params=params.model_dump()), params


def vector(job: Job, result: dict[str, Any]) -> np.ndarray:
    loaded: np.ndarray = np.load(current().job_dir(job.job_id) / result["task_output"]["embedding_path"])
    return loaded


async def alone(task: EmbeddingTask, jobs: Sequence[tuple[Job, Any]]) -> list[dict[str, Any]]:
    return [await task.execute(job, params) for job, params in jobs]


async def together(task: EmbeddingTask, jobs: Sequence[tuple[Job, Any]]) -> list[Any]:
    return await task.execute_batch([(job, params, lambda _p: None) for job, params in jobs])


def same_outcomes(
    batch_jobs: Sequence[tuple[Job, Any]],
    batched: Sequence[Any],
    single_jobs: Sequence[tuple[Job, Any]],
    singles: Sequence[dict[str, Any]],
) -> None:
    for (b_job, _), b, (s_job, _), s in zip(batch_jobs, batched, single_jobs, singles, strict=True):
        assert b["status"] == s["status"] == "ok", (b, s)
        assert b["task_output"].keys() == s["task_output"].keys()
        for key, value in s["task_output"].items():
            assert b["task_output"][key] == pytest.approx(value), key
        # Another batch size may take other kernels in ONNX Runtime: equal to float precision.
        np.testing.assert_allclose(vector(b_job, b), vector(s_job, s), rtol=1e-5, atol=1e-6)


@by_model
async def test_a_batch_runs_the_model_once_and_gives_each_job_what_it_gets_alone(
    local_env: Path, photos: list[bytes], model: Model, counting: Callable[[EmbeddingTask], CountingSession]
) -> None:
    model.write(local_env, dynamic_batch=True)
    task = model.task()
    assert task.batchable()
    flags = [True, False, True, True, False]  # each job its own normalize
    single_jobs = [new_job(task, photo, flag) for photo, flag in zip(photos, flags, strict=True)]
    singles = await alone(task, single_jobs)

    runs = counting(task)
    batch_jobs = [new_job(task, photo, flag) for photo, flag in zip(photos, flags, strict=True)]
    batched = await together(task, batch_jobs)

    assert runs.batches == [5]
    same_outcomes(batch_jobs, batched, single_jobs, singles)
    assert [r["task_output"]["normalized"] for r in batched] == flags
    vectors = [vector(job, r) for (job, _), r in zip(batch_jobs, batched, strict=True)]
    norms = [float(np.linalg.norm(v)) for v in vectors]
    assert [norm == pytest.approx(1.0, abs=1e-5) for norm in norms] == flags
    assert len({v.tobytes() for v in vectors}) == 5  # five photos, five embeddings


@by_model
async def test_a_bad_image_fails_its_own_job_and_its_batch_mates_complete(
    local_env: Path,
    photos: list[bytes],
    astronaut_jpeg: bytes,
    model: Model,
    counting: Callable[[EmbeddingTask], CountingSession],
) -> None:
    model.write(local_env, dynamic_batch=True)
    task = model.task()
    good = [photos[1], photos[2], photos[4]]
    single_jobs = [new_job(task, photo) for photo in good]
    singles = await alone(task, single_jobs)

    runs = counting(task)
    truncated = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    contents = [truncated, good[0], b"not an image at all", good[1], None, good[2]]
    batch_jobs = [new_job(task, content) for content in contents]
    batched = await together(task, batch_jobs)

    assert runs.batches == [3]  # the jobs whose image decoded, in one run
    assert batched[0]["status"] == "error" and "corrupt image" in batched[0]["error"]
    assert batched[2]["status"] == "error" and "not a decodable image" in batched[2]["error"]
    # A folder where the upload should be: not the image's fault, a crash of that job alone.
    assert isinstance(batched[4], IsADirectoryError)
    same_outcomes([batch_jobs[i] for i in (1, 3, 5)], [batched[i] for i in (1, 3, 5)], single_jobs, singles)
    for job, _ in (batch_jobs[0], batch_jobs[2], batch_jobs[4]):
        assert not (current().job_dir(job.job_id) / "output").exists()


@by_model
async def test_a_model_with_a_fixed_batch_of_one_takes_the_jobs_one_at_a_time(
    local_env: Path, photos: list[bytes], model: Model, counting: Callable[[EmbeddingTask], CountingSession]
) -> None:
    model.write(local_env)
    task = model.task()
    assert not task.batchable()
    single_jobs = [new_job(task, photo) for photo in photos[:3]]
    singles = await alone(task, single_jobs)

    runs = counting(task)
    batch_jobs = [new_job(task, photo) for photo in photos[:3]]
    batched = await together(task, batch_jobs)

    assert runs.batches == [1, 1, 1]
    same_outcomes(batch_jobs, batched, single_jobs, singles)


@by_model
async def test_a_model_that_declares_a_batch_but_answers_for_one_is_run_again_image_by_image(
    local_env: Path, photos: list[bytes], model: Model, counting: Callable[[EmbeddingTask], CountingSession]
) -> None:
    model.write(local_env, collapse_batch=True)
    task = model.task()
    single_jobs = [new_job(task, photo) for photo in photos[:3]]
    singles = await alone(task, single_jobs)

    runs = counting(task)
    batch_jobs = [new_job(task, photo) for photo in photos[:3]]
    batched = await together(task, batch_jobs)

    assert runs.batches == [3, 1, 1, 1]
    same_outcomes(batch_jobs, batched, single_jobs, singles)


async def test_a_missing_model_fails_every_job_of_the_batch_naming_the_file(
    local_env: Path, photos: list[bytes]
) -> None:
    task = ClipEmbeddingTask()
    assert not task.batchable()
    batched = await together(task, [new_job(task, photo) for photo in photos[:2]])
    for result in batched:
        assert result["status"] == "error"
        assert "mobileclip_s2_image_encoder.onnx is missing" in result["error"]
        assert str(local_env) not in result["error"]


async def test_each_job_reports_its_own_progress(local_env: Path, photos: list[bytes]) -> None:
    onnx_models.clip(local_env, dynamic_batch=True)
    task = ClipEmbeddingTask()
    reported: dict[int, list[int]] = {0: [], 1: [], 2: []}
    jobs = [new_job(task, photos[0]), new_job(task, b"junk"), new_job(task, photos[1])]
    await task.execute_batch([(job, params, reported[i].append) for i, (job, params) in enumerate(jobs)])
    assert reported == {0: [90, 100], 1: [], 2: [90, 100]}
