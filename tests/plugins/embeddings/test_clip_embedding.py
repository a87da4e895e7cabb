"""clip_embedding: MobileCLIP-S2's pre-processing on a real photo, and the job end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compute.plugins.clip_embedding.algorithm import clip_embedding
from compute.plugins.clip_embedding.task import ClipEmbeddingTask
from compute.plugins.models import MODELS
from compute_bench import onnx_models
from tests.support.embedding_images import CLIP_MEAN, CLIP_STD, decoded, reference_tensor, unit
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job


def expected_clip(tiny: onnx_models.TinyEmbedder, content: bytes, size: int = 256) -> np.ndarray:
    """Bicubic straight to size x size, /255, CLIP mean/std, NCHW: what cl_ml_tools does."""
    tensor = reference_tensor(decoded(content), (size, size), Image.Resampling.BICUBIC, CLIP_MEAN, CLIP_STD)
    return tiny.expected(tensor).reshape(-1)


def write(tmp_path: Path, content: bytes, name: str = "photo.jpg") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# -- algorithm ---------------------------------------------------------------------------------


def test_embedding_of_a_photo_matches_the_upstream_pipeline(
    local_env: Path, tmp_path: Path, wide_jpeg: bytes
) -> None:
    tiny = onnx_models.clip(local_env)
    vector = clip_embedding(write(tmp_path, wide_jpeg))
    assert vector.shape == (512,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # Tight enough that bilinear instead of bicubic (max difference ~3e-4) or a crop would fail.
    np.testing.assert_allclose(vector, unit(expected_clip(tiny, wide_jpeg)), atol=2e-5)

    raw = clip_embedding(write(tmp_path, wide_jpeg), normalize=False)
    np.testing.assert_allclose(raw, expected_clip(tiny, wide_jpeg), rtol=1e-4, atol=1e-4)


def test_different_photos_give_different_embeddings(
    local_env: Path, tmp_path: Path, astronaut_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    onnx_models.clip(local_env)
    a = clip_embedding(write(tmp_path, astronaut_jpeg, "a.jpg"))
    b = clip_embedding(write(tmp_path, coffee_jpeg, "b.jpg"))
    assert float(a @ b) < 0.99


def test_a_model_with_dynamic_spatial_dims_gets_256x256(
    local_env: Path, tmp_path: Path, astronaut_jpeg: bytes
) -> None:
    tiny = onnx_models.clip(local_env, dynamic=True)
    vector = clip_embedding(write(tmp_path, astronaut_jpeg))
    np.testing.assert_allclose(vector, unit(expected_clip(tiny, astronaut_jpeg)), atol=2e-5)


def test_the_input_size_is_read_from_the_model(
    local_env: Path, tmp_path: Path, astronaut_jpeg: bytes
) -> None:
    tiny = onnx_models.embedder(MODELS["clip_embedding"].path(), size=(224, 224), dim=512)
    vector = clip_embedding(write(tmp_path, astronaut_jpeg))
    np.testing.assert_allclose(vector, unit(expected_clip(tiny, astronaut_jpeg, size=224)), atol=2e-5)


def test_unavailable_names_the_missing_file(local_env: Path) -> None:
    reason = ClipEmbeddingTask().unavailable()
    assert reason is not None and "mobileclip_s2_image_encoder.onnx is missing" in reason
    assert str(local_env) not in reason
    onnx_models.clip(local_env)
    assert ClipEmbeddingTask().unavailable() is None


def test_unavailable_names_a_model_of_the_wrong_size(local_env: Path) -> None:
    onnx_models.clip(local_env, dim=768)
    reason = ClipEmbeddingTask().unavailable()
    assert reason is not None and "768-dimensional" in reason and "expected 512" in reason


# -- route -> worker -> result ------------------------------------------------------------------


async def test_job_writes_a_unit_512_vector(
    server: Server, start_worker: WorkerFactory, models_dir: Path, wide_jpeg: bytes
) -> None:
    tiny = onnx_models.clip(models_dir)
    await start_worker(tasks=("clip_embedding",))
    job = await run_job(server, "clip_embedding", wide_jpeg, "holiday.jpg")

    assert job["params"] == {
        "input_path": "input/upload.jpg",
        "output_path": "output/clip_embedding.npy",
        "normalize": True,
        "original_filename": "holiday.jpg",
    }
    assert job["task_output"] == {
        "embedding_dim": 512,
        "normalized": True,
        "embedding_path": "output/clip_embedding.npy",
    }
    assert job["progress"] == 100 and job["error_message"] is None
    vector = np.load(io.BytesIO(await download(server, job["job_id"], "output/clip_embedding.npy")))
    assert vector.shape == (512,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vector, unit(expected_clip(tiny, wide_jpeg)), atol=2e-5)


async def test_job_without_normalisation(
    server: Server, start_worker: WorkerFactory, models_dir: Path, astronaut_jpeg: bytes
) -> None:
    tiny = onnx_models.clip(models_dir)
    await start_worker(tasks=("clip_embedding",))
    job = await run_job(server, "clip_embedding", astronaut_jpeg, "a.jpg", data={"normalize": "false"})

    assert job["params"]["normalize"] is False and job["task_output"]["normalized"] is False
    vector = np.load(io.BytesIO(await download(server, job["job_id"], "output/clip_embedding.npy")))
    np.testing.assert_allclose(vector, expected_clip(tiny, astronaut_jpeg), rtol=1e-4, atol=1e-4)
    assert abs(float(np.linalg.norm(vector)) - 1.0) > 0.01
