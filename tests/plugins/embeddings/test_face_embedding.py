"""face_embedding: both ArcFace input layouts, the sharpness score, and the job end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFilter
from scipy.signal import convolve2d
from skimage import data

from compute.plugins.face_embedding.algorithm import face_embedding, quality_score
from compute.plugins.face_embedding.task import FaceEmbeddingTask
from compute_bench import onnx_models
from tests.support.embedding_images import decoded, jpeg_bytes, unit
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    """The astronaut's face, cropped loosely (180x200), as a face detector's crop would be."""
    return jpeg_bytes(data.astronaut()[20:220, 160:340])  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def soft_face_jpeg() -> bytes:
    """The face crop slightly out of focus: a quality score below the cap of 1."""
    soft = Image.fromarray(data.astronaut()[20:220, 160:340]).filter(ImageFilter.GaussianBlur(1.5))  # type: ignore[no-untyped-call]
    return jpeg_bytes(np.asarray(soft))


def arcface_tensor(content: bytes, layout: str) -> NDArray[np.float64]:
    """onnx-community arcface.onnx: RGB /255 NHWC. InsightFace: RGB (x - 127.5) / 127.5 NCHW."""
    pixels = np.asarray(decoded(content).resize((112, 112), Image.Resampling.BILINEAR), dtype=np.float64)
    if layout == "NHWC":
        return (pixels / 255.0)[np.newaxis]
    return ((pixels - 127.5) / 127.5).transpose(2, 0, 1)[np.newaxis]


def upstream_quality(image: Image.Image) -> float:
    """cl_ml_tools' measure, with scipy as it has it: Laplacian variance / 100, capped at 1."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    return min(float(np.var(convolve2d(gray, kernel, mode="same", boundary="symm"))) / 100.0, 1.0)


def write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "face.jpg"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_both_published_layouts(local_env: Path, tmp_path: Path, face_jpeg: bytes, layout: str) -> None:
    tiny = onnx_models.arcface(local_env, layout=layout)
    face = face_embedding(write(tmp_path, face_jpeg))
    assert face.vector.shape == (512,) and face.vector.dtype == np.float32
    assert np.linalg.norm(face.vector) == pytest.approx(1.0, abs=1e-5)
    expected = tiny.expected(arcface_tensor(face_jpeg, layout)).reshape(-1)
    np.testing.assert_allclose(face.vector, unit(expected), atol=2e-5)

    raw = face_embedding(write(tmp_path, face_jpeg), normalize=False).vector
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-4)


def test_different_faces_give_different_embeddings(
    local_env: Path, tmp_path: Path, face_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    onnx_models.arcface(local_env)
    a = face_embedding(write(tmp_path, face_jpeg)).vector
    b = face_embedding(write(tmp_path, coffee_jpeg)).vector
    assert float(a @ b) < 0.99


def test_quality_score_is_the_upstream_measure(face_jpeg: bytes) -> None:
    sharp = decoded(face_jpeg)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    # Blurred enough to stay under the cap, so the value itself is compared.
    assert 0.01 < upstream_quality(blurred) < 0.9
    assert quality_score(blurred) == pytest.approx(upstream_quality(blurred), rel=1e-4)
    assert quality_score(sharp) == pytest.approx(upstream_quality(sharp), rel=1e-4)
    assert quality_score(sharp) > quality_score(blurred)
    assert quality_score(Image.new("RGB", (50, 40), (90, 120, 30))) == 0.0
    # A detailed photo is capped at 1.
    assert quality_score(Image.fromarray(data.astronaut())) == 1.0  # type: ignore[no-untyped-call]


def test_quality_is_measured_on_the_crop_as_uploaded(
    local_env: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    onnx_models.arcface(local_env)
    blurred = decoded(face_jpeg).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    blurred.save(buf, format="PNG")
    face = face_embedding(write(tmp_path, buf.getvalue()))
    assert face.quality_score == pytest.approx(upstream_quality(blurred), rel=1e-4)


def test_unavailable(local_env: Path) -> None:
    reason = FaceEmbeddingTask().unavailable()
    assert reason is not None and "arcface.onnx is missing" in reason
    onnx_models.arcface(local_env, dim=128)  # an older 128-d FaceNet-style file under that name
    reason = FaceEmbeddingTask().unavailable()
    assert reason is not None and "128-dimensional" in reason and "expected 512" in reason


async def test_job_writes_a_unit_512_vector_and_a_quality(
    server: Server, start_worker: WorkerFactory, models_dir: Path, soft_face_jpeg: bytes
) -> None:
    tiny = onnx_models.arcface(models_dir)
    await start_worker(tasks=("face_embedding",))
    job = await run_job(server, "face_embedding", soft_face_jpeg, "face_0.jpg")

    assert job["params"] == {
        "input_path": "input/upload.jpg",
        "output_path": "output/face_embedding.npy",
        "normalize": True,
        "original_filename": "face_0.jpg",
    }
    output = job["task_output"]
    assert output["embedding_dim"] == 512 and output["normalized"] is True
    assert output["embedding_path"] == "output/face_embedding.npy"
    assert 0.0 < output["quality_score"] < 1.0
    assert output["quality_score"] == pytest.approx(upstream_quality(decoded(soft_face_jpeg)), rel=1e-4)
    vector = np.load(io.BytesIO(await download(server, job["job_id"], "output/face_embedding.npy")))
    assert vector.shape == (512,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    expected = tiny.expected(arcface_tensor(soft_face_jpeg, "NHWC"))
    np.testing.assert_allclose(vector, unit(expected), atol=2e-5)
