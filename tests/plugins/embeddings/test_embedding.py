"""The shared embedding steps (compute.plugins.embedding) on a real photo and tiny ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compute.plugins import embedding, models
from compute.plugins.models import MODELS, ModelUnavailable
from compute_bench import onnx_models
from tests.support.embedding_images import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    decoded,
    reference_tensor,
)

CLIP_PREP = embedding.Preprocess(
    (256, 256), Image.Resampling.BICUBIC, embedding.CLIP_MEAN, embedding.CLIP_STD
)


def test_constants_are_the_upstream_ones() -> None:
    np.testing.assert_allclose(embedding.CLIP_MEAN, CLIP_MEAN, atol=1e-9)
    np.testing.assert_allclose(embedding.CLIP_STD, CLIP_STD, atol=1e-9)
    np.testing.assert_allclose(embedding.IMAGENET_MEAN, IMAGENET_MEAN, atol=1e-9)
    np.testing.assert_allclose(embedding.IMAGENET_STD, IMAGENET_STD, atol=1e-9)


def test_nchw_tensor_matches_the_upstream_preprocessing(wide_jpeg: bytes) -> None:
    image = decoded(wide_jpeg)
    tensor = embedding.to_tensor(image, CLIP_PREP)
    assert tensor.shape == (1, 3, 256, 256) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    expected = reference_tensor(image, (256, 256), Image.Resampling.BICUBIC, CLIP_MEAN, CLIP_STD)
    np.testing.assert_allclose(tensor, expected, atol=1e-5)
    # Channel 0 is red: the astronaut's red suit makes R and B differ a lot.
    assert not np.allclose(tensor[0, 0], tensor[0, 2], atol=0.1)


def test_nhwc_tensor_and_a_size_from_the_model(astronaut_jpeg: bytes) -> None:
    image = decoded(astronaut_jpeg)
    prep = embedding.Preprocess((112, 112), Image.Resampling.BILINEAR, layout="NHWC")
    tensor = embedding.to_tensor(image, prep, size=(96, 80))
    assert tensor.shape == (1, 96, 80, 3)
    expected = reference_tensor(image, (80, 96), Image.Resampling.BILINEAR, [0, 0, 0], [1, 1, 1], "NHWC")
    np.testing.assert_allclose(tensor, expected, atol=1e-6)
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_greyscale_and_rgba_images_become_rgb() -> None:
    grey = Image.new("L", (40, 30), 128)
    rgba = Image.new("RGBA", (40, 30), (128, 128, 128, 0))
    prep = embedding.Preprocess((8, 8), Image.Resampling.BILINEAR)
    for image in (grey, rgba):
        tensor = embedding.to_tensor(image, prep)
        assert tensor.shape == (1, 3, 8, 8)
        np.testing.assert_allclose(tensor, 128 / 255, atol=1e-6)


def test_to_vector_squeezes_flattens_or_takes_the_cls_token() -> None:
    tokens = np.arange(3 * 4, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(embedding.to_vector(tokens, cls_token=True), [0, 1, 2, 3])
    assert embedding.to_vector(tokens).shape == (12,)  # CLIP's rule: flatten
    np.testing.assert_array_equal(embedding.to_vector(np.ones((1, 5, 1, 1))), np.ones(5))
    assert embedding.to_vector(np.ones((1, 5)), cls_token=True).shape == (5,)


def test_l2_normalise() -> None:
    v = embedding.l2_normalise(np.array([3.0, 4.0], dtype=np.float32))
    np.testing.assert_allclose(v, [0.6, 0.8])
    assert v.dtype == np.float32
    zero = np.zeros(4, dtype=np.float32)
    np.testing.assert_array_equal(embedding.l2_normalise(zero), zero)


def test_save_writes_float32_1d(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    embedding.save(np.arange(6, dtype=np.float64).reshape(2, 3), target)  # type: ignore[arg-type]
    loaded = np.load(target)
    assert loaded.dtype == np.float32 and loaded.shape == (6,)
    # Exactly where it is told, even without the .npy suffix (cl_ml_tools' dino_embedding.nb slip).
    embedding.save(np.ones(3, dtype=np.float32), tmp_path / "y.nb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.nb"]


def test_input_size_from_a_static_shape_else_the_default(local_env: Path) -> None:
    spec = MODELS["clip_embedding"]
    onnx_models.embedder(spec.path(), size=(64, 32), dim=8, grid=4)
    assert embedding.input_size(models.session(spec), CLIP_PREP) == (64, 32)
    models.forget()
    onnx_models.clip(local_env, dynamic=True)
    assert embedding.input_size(models.session(spec), CLIP_PREP) == (256, 256)


def test_input_layout_from_the_model(local_env: Path) -> None:
    spec = MODELS["face_embedding"]
    onnx_models.arcface(local_env, layout="NHWC")
    assert embedding.input_layout(models.session(spec)) == "NHWC"
    models.forget()
    onnx_models.arcface(local_env, layout="NCHW")
    assert embedding.input_layout(models.session(spec)) == "NCHW"


def test_embed_runs_the_model_on_the_preprocessed_image(local_env: Path, wide_jpeg: bytes) -> None:
    spec = MODELS["clip_embedding"]
    tiny = onnx_models.clip(local_env)
    image = decoded(wide_jpeg)
    raw = embedding.embed(spec, image, CLIP_PREP, 512, normalize=False)
    expected = tiny.expected(
        reference_tensor(image, (256, 256), Image.Resampling.BICUBIC, CLIP_MEAN, CLIP_STD)
    ).reshape(-1)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-4)
    unit = embedding.embed(spec, image, CLIP_PREP, 512, normalize=True)
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)


def test_embed_refuses_an_output_of_another_size(local_env: Path, astronaut_jpeg: bytes) -> None:
    spec = MODELS["clip_embedding"]
    onnx_models.clip(local_env, dim=256)
    with pytest.raises(
        embedding.WrongModel,
        match=r"mobileclip_s2_image_encoder\.onnx gives "
        r"256-dimensional embeddings, expected 512",
    ):
        embedding.embed(spec, decoded(astronaut_jpeg), CLIP_PREP, 512, normalize=True)


def test_model_problem_names_the_file_and_never_its_folder(local_env: Path) -> None:
    spec = MODELS["dino_embedding"]
    missing = embedding.model_problem(spec, 384, cls_token=True)
    assert missing is not None and "dinov2_vits14.onnx is missing" in missing
    assert str(local_env) not in missing

    spec.path().write_bytes(b"not an onnx model")
    broken = embedding.model_problem(spec, 384, cls_token=True)
    assert broken is not None and "dinov2_vits14.onnx cannot be loaded" in broken
    assert str(local_env) not in broken

    onnx_models.dino(local_env, dim=768)
    wrong = embedding.model_problem(spec, 384, cls_token=True)
    assert wrong is not None and "declares 768-dimensional embeddings, expected 384" in wrong

    models.forget()
    onnx_models.dino(local_env)
    assert embedding.model_problem(spec, 384, cls_token=True) is None


def test_static_dim_ignores_a_symbolic_batch(local_env: Path) -> None:
    # Declared [batch, 512]: the dims after the batch still say 512.
    onnx_models.clip(local_env, dynamic=True)
    assert embedding.static_dim(models.session(MODELS["clip_embedding"]), cls_token=False) == 512


def test_a_missing_model_raises_model_unavailable(local_env: Path, astronaut_jpeg: bytes) -> None:
    with pytest.raises(ModelUnavailable, match=r"mobileclip_s2_image_encoder\.onnx is missing"):
        embedding.embed(MODELS["clip_embedding"], decoded(astronaut_jpeg), CLIP_PREP, 512, normalize=True)


def test_sessions_are_loaded_with_threads_that_do_not_spin(local_env: Path) -> None:
    # Spinning threads took the cores the next image's decode needed (models.session_options).
    onnx_models.clip(local_env)
    options = models.session(MODELS["clip_embedding"]).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
