"""dino_embedding: DINOv2's pre-processing and CLS token on a real photo, and the job end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compute.plugins.dino_embedding.algorithm import dino_embedding
from compute.plugins.dino_embedding.task import DinoEmbeddingTask
from compute_bench import onnx_models
from tests.support.embedding_images import IMAGENET_MEAN, IMAGENET_STD, decoded, reference_tensor, unit
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job


def expected_dino(tiny: onnx_models.TinyEmbedder, content: bytes) -> np.ndarray:
    """Bilinear straight to 224x224, /255, ImageNet mean/std, NCHW; the CLS token (first)."""
    tensor = reference_tensor(
        decoded(content), (224, 224), Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD
    )
    out = tiny.expected(tensor)
    return out[0, 0] if tiny.tokens else out.reshape(-1)


def write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    return path


def test_the_cls_token_of_a_photo(local_env: Path, tmp_path: Path, wide_jpeg: bytes) -> None:
    tiny = onnx_models.dino(local_env)  # [1, T, 384]
    vector = dino_embedding(write(tmp_path, wide_jpeg))
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vector, unit(expected_dino(tiny, wide_jpeg)), atol=2e-5)
    # Not some other token: each row of the tiny model's sequence is different.
    tokens = tiny.expected(
        reference_tensor(
            decoded(wide_jpeg), (224, 224), Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD
        )
    )[0]
    assert all(float(unit(tokens[i]) @ vector) < 0.99 for i in range(1, tiny.tokens))


def test_a_model_that_returns_the_cls_token_only(
    local_env: Path, tmp_path: Path, astronaut_jpeg: bytes
) -> None:
    tiny = onnx_models.dino(local_env, tokens=0)  # [1, 384]
    raw = dino_embedding(write(tmp_path, astronaut_jpeg), normalize=False)
    np.testing.assert_allclose(raw, expected_dino(tiny, astronaut_jpeg), rtol=1e-4, atol=1e-4)


def test_different_photos_give_different_embeddings(
    local_env: Path, tmp_path: Path, astronaut_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    onnx_models.dino(local_env)
    a = dino_embedding(write(tmp_path, astronaut_jpeg))
    b = dino_embedding(write(tmp_path, coffee_jpeg))
    assert float(a @ b) < 0.99


def test_unavailable(local_env: Path) -> None:
    reason = DinoEmbeddingTask().unavailable()
    assert reason is not None and "dinov2_vits14.onnx is missing" in reason
    onnx_models.dino(local_env, dim=768)  # ViT-B/14 under the ViT-S name
    reason = DinoEmbeddingTask().unavailable()
    assert reason is not None and "768-dimensional" in reason and "expected 384" in reason


async def test_job_writes_a_unit_384_vector(
    server: Server, start_worker: WorkerFactory, models_dir: Path, wide_jpeg: bytes
) -> None:
    tiny = onnx_models.dino(models_dir)
    await start_worker(tasks=("dino_embedding",))
    job = await run_job(server, "dino_embedding", wide_jpeg, "holiday.jpg")

    assert job["params"] == {
        "input_path": "input/upload.jpg",
        "output_path": "output/dino_embedding.npy",
        "normalize": True,
        "original_filename": "holiday.jpg",
    }
    assert job["task_output"] == {
        "embedding_dim": 384,
        "normalized": True,
        "embedding_path": "output/dino_embedding.npy",
    }
    assert job["progress"] == 100
    vector = np.load(io.BytesIO(await download(server, job["job_id"], "output/dino_embedding.npy")))
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vector, unit(expected_dino(tiny, wide_jpeg)), atol=2e-5)
