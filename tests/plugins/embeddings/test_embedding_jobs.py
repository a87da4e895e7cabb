"""The three embedding tasks as CL Server's SDK sees them, and what they do with bad input,
missing models and wrong models."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compute.plugins import models
from compute.plugins.clip_embedding.task import ClipEmbeddingTask
from compute.plugins.dino_embedding.task import DinoEmbeddingTask
from compute.plugins.face_embedding.task import FaceEmbeddingTask
from compute.plugins.plugin_task import PluginTask
from compute.plugins.registry import UnavailableTasks, load_tasks
from compute_bench import onnx_models
from tests.support.images import png_header_only
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download


@dataclass(frozen=True)
class Embedder:
    task: str
    plugin: type[PluginTask]
    #: Writes a tiny model of the given output size into the models folder.
    model: Callable[..., onnx_models.TinyEmbedder]
    filename: str
    dim: int

    @property
    def output(self) -> str:
        return f"output/{self.task}.npy"

    def write_model(self, models_dir: Path, dim: int | None = None) -> None:
        self.model(models_dir, dim=dim or self.dim)


EMBEDDERS = [
    Embedder("clip_embedding", ClipEmbeddingTask, onnx_models.clip, "mobileclip_s2_image_encoder.onnx", 512),
    Embedder("dino_embedding", DinoEmbeddingTask, onnx_models.dino, "dinov2_vits14.onnx", 384),
    Embedder("face_embedding", FaceEmbeddingTask, onnx_models.arcface, "arcface.onnx", 512),
]
by_task = pytest.mark.parametrize("embedder", EMBEDDERS, ids=[e.task for e in EMBEDDERS])


def no_server_paths(message: str, server: Server) -> None:
    for folder in (server.settings.cl_server_dir, server.settings.storage_dir, server.settings.models_dir):
        assert str(folder) not in message, message


def no_job_folders(server: Server) -> None:
    jobs = server.settings.storage_dir / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), list(jobs.iterdir())


async def submit(server: Server, task: str, content: bytes, filename: str = "photo.jpg") -> Any:
    """As the SDK does: multipart `file` and priority "5", nothing else."""
    return await server.client.post(
        f"/jobs/{task}", data={"priority": "5"}, files={"file": (filename, content, "image/jpeg")}
    )


# -- the SDK's view -----------------------------------------------------------------------------


async def test_the_sdk_contract(
    server: Server, start_worker: WorkerFactory, models_dir: Path, astronaut_jpeg: bytes
) -> None:
    for embedder in EMBEDDERS:
        embedder.write_model(models_dir)
    await start_worker(tasks=tuple(e.task for e in EMBEDDERS))

    for embedder in EMBEDDERS:
        response = await submit(server, embedder.task, astronaut_jpeg, "test_image_face_single.jpg")
        assert response.status_code == 200, response.text
        created = response.json()
        assert created["status"] == "queued" and created["task_type"] == embedder.task
        job = await server.wait_status(created["job_id"], "completed", timeout=30)

        # JobResponse: every field it declares, with its type.
        assert job["job_id"] == created["job_id"] and job["task_type"] == embedder.task
        assert job["progress"] == 100 and job["priority"] == 5 and job["error_message"] is None
        assert isinstance(job["created_at"], int)
        assert all(isinstance(job[k], int) for k in ("updated_at", "started_at", "completed_at"))
        params = job["params"]
        assert params["input_path"].startswith("input/") and params["output_path"] == embedder.output
        assert params["normalize"] is True
        # What the SDK's integration tests read.
        output = job["task_output"]
        assert output["embedding_dim"] == embedder.dim and "normalized" in output
        if embedder.task == "face_embedding":
            assert 0.0 <= output["quality_score"] <= 1.0
        content = await download(server, job["job_id"], embedder.output)
        assert len(content) > 0
        vector = np.load(io.BytesIO(content))
        assert vector.shape == (embedder.dim,) and vector.dtype == np.float32
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


# -- uploads refused at the door -------------------------------------------------------------------


@by_task
async def test_a_file_that_is_not_an_image_is_refused(server: Server, embedder: Embedder) -> None:
    response = await submit(server, embedder.task, b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n" * 10, "face.jpg")
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "unrecognised format" in detail and "image/jpeg" in detail
    no_job_folders(server)


@by_task
async def test_a_pixel_bomb_is_refused(server: Server, embedder: Embedder) -> None:
    response = await submit(server, embedder.task, png_header_only(30_000, 30_000), "bomb.png")
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["detail"]
    no_job_folders(server)


# -- jobs that fail, at once and clearly --------------------------------------------------------------


@by_task
async def test_a_corrupt_image_fails_the_job(
    server: Server, start_worker: WorkerFactory, models_dir: Path, astronaut_jpeg: bytes, embedder: Embedder
) -> None:
    embedder.write_model(models_dir)
    await start_worker(tasks=(embedder.task,))
    truncated = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    response = await submit(server, embedder.task, truncated)
    assert response.status_code == 200, response.text
    job = await server.wait_status(response.json()["job_id"], "failed", timeout=15)
    assert "corrupt image" in job["error_message"] and "truncated" in job["error_message"]
    no_server_paths(job["error_message"], server)


@by_task
async def test_a_missing_model_fails_the_job_naming_the_file(
    server: Server, start_worker: WorkerFactory, astronaut_jpeg: bytes, embedder: Embedder
) -> None:
    # The plugin handed to the worker directly, as if the model vanished after it started.
    await start_worker(tasks=(embedder.task,), plugins={embedder.task: embedder.plugin()})
    response = await submit(server, embedder.task, astronaut_jpeg)
    job = await server.wait_status(response.json()["job_id"], "failed", timeout=15)
    assert job["error_message"].startswith(f"model file {embedder.filename} is missing"), job["error_message"]
    assert job["task_output"] is None
    no_server_paths(job["error_message"], server)


@by_task
async def test_a_model_of_the_wrong_size_fails_the_job(
    server: Server, start_worker: WorkerFactory, models_dir: Path, astronaut_jpeg: bytes, embedder: Embedder
) -> None:
    embedder.write_model(models_dir, dim=256)
    await start_worker(tasks=(embedder.task,), plugins={embedder.task: embedder.plugin()})
    response = await submit(server, embedder.task, astronaut_jpeg)
    job = await server.wait_status(response.json()["job_id"], "failed", timeout=15)
    assert (
        f"model file {embedder.filename} gives 256-dimensional embeddings, expected {embedder.dim}"
        in job["error_message"]
    )
    no_server_paths(job["error_message"], server)


@by_task
async def test_a_worker_does_not_take_a_task_without_its_model(
    server: Server, models_dir: Path, embedder: Embedder
) -> None:
    with pytest.raises(UnavailableTasks, match=f"{embedder.task}: model file {embedder.filename} is missing"):
        load_tasks([embedder.task])
    embedder.write_model(models_dir, dim=128)
    with pytest.raises(UnavailableTasks, match="128-dimensional"):
        load_tasks([embedder.task])
    models.forget()
    embedder.write_model(models_dir)
    assert list(load_tasks([embedder.task])) == [embedder.task]


async def test_a_job_waits_for_a_worker_with_the_model(
    server: Server, start_worker: WorkerFactory, models_dir: Path, astronaut_jpeg: bytes
) -> None:
    """Uploads are taken while no worker has the model; one that has it runs them later."""
    embedder = EMBEDDERS[0]
    response = await submit(server, embedder.task, astronaut_jpeg)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    assert (await server.job(job_id))["status"] == "queued"
    embedder.write_model(models_dir)
    await start_worker(tasks=(embedder.task,), wait_idle=False)
    job = await server.wait_status(job_id, "completed", timeout=30)
    assert job["task_output"]["embedding_dim"] == embedder.dim
