"""Image embeddings with ONNX models, shared by clip_embedding, dino_embedding and face_embedding:
an image to the model's input tensor, the model's output to one vector of the expected length,
the vector L2-normalised and saved as a float32 .npy file.

Several images can go through the model in one run (`vectors`), when the model takes a batch:
each image is pre-processed on its own, the tensors are stacked, and each row of the output is
checked on its own, so a batch gives each image the vector it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from compute.plugins import models
from compute.plugins.models import ModelSpec, ModelUnavailable

Layout = Literal["NCHW", "NHWC"]
Vector = NDArray[np.float32]

#: OpenAI CLIP's normalisation, which MobileCLIP keeps.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WrongModel(ModelUnavailable):
    """The model file loads but is not the model the task expects (another output size)."""


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the model's input: RGB resized straight to (height, width), aspect
    ratio not kept (as the upstream embedders do), scaled to 0..1, then (x - mean) / std."""

    #: (height, width) when the model's input shape does not fix it.
    size: tuple[int, int]
    resample: Image.Resampling
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Layout = "NCHW"


def input_layout(session: Any) -> Layout:
    """NHWC when the model's image input has its 3 channels last ([1,112,112,3]), else NCHW."""
    shape = session.get_inputs()[0].shape
    return "NHWC" if shape[-1] == 3 and shape[1] != 3 else "NCHW"


def input_size(session: Any, prep: Preprocess) -> tuple[int, int]:
    """(height, width) from the model's input shape when it is static, else `prep.size`."""
    shape = session.get_inputs()[0].shape
    height, width = (shape[2], shape[3]) if prep.layout == "NCHW" else (shape[1], shape[2])
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return prep.size


def to_tensor(image: Image.Image, prep: Preprocess, size: tuple[int, int] | None = None) -> Vector:
    """The batch of one the model takes: float32 [1,3,H,W] (NCHW) or [1,H,W,3] (NHWC)."""
    height, width = size or prep.size
    resized = image.convert("RGB").resize((width, height), prep.resample)
    mean: Vector = np.array(prep.mean, dtype=np.float32)
    std: Vector = np.array(prep.std, dtype=np.float32)
    scaled: Vector = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    pixels: Vector = (scaled - mean) / std
    if prep.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[np.newaxis], dtype=np.float32)


def to_vector(output: NDArray[Any], *, cls_token: bool = False) -> Vector:
    """The model's first output as one vector: batch axes squeezed away; a token sequence
    ([T, D], DINOv2) gives its CLS token (row 0) when `cls_token`, anything else is flattened."""
    vector = np.squeeze(np.asarray(output, dtype=np.float32))
    if cls_token and vector.ndim > 1:
        vector = vector.reshape(-1, vector.shape[-1])[0]
    return vector.reshape(-1)


def l2_normalise(vector: Vector) -> Vector:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector


def check_dim(vector: Vector, expected: int, spec: ModelSpec) -> None:
    if vector.shape[0] != expected:
        raise WrongModel(
            f"model file {spec.filename} gives {vector.shape[0]}-dimensional embeddings, "
            f"expected {expected}; this task needs {spec.title}"
        )


def static_dim(session: Any, cls_token: bool) -> int | None:
    """The embedding length the first output's declared shape promises, or None when it is dynamic."""
    dims = list(session.get_outputs()[0].shape[1:])
    if cls_token:
        dims = dims[-1:]
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return int(prod(dims))
    return None


def model_problem(spec: ModelSpec, expected_dim: int, *, cls_token: bool = False) -> str | None:
    """Why the task's model cannot be used here (missing, broken, wrong size), or None.

    Loads the model: the session stays cached for the jobs that follow.
    """
    missing = models.problem(spec)
    if missing is not None:
        return missing
    declared = static_dim(models.session(spec), cls_token)
    if declared is not None and declared != expected_dim:
        return (
            f"model file {spec.filename} declares {declared}-dimensional embeddings, "
            f"expected {expected_dim}; this task needs {spec.title}"
        )
    return None


def first_outputs(session: Any, tensors: Sequence[Vector]) -> list[NDArray[Any] | Exception]:
    """The model's first output for each tensor (each a batch of one), itself a batch of one.

    One run over the stacked tensors when there are several and the model takes a batch
    (`models.takes_batches`); else one run per tensor. A batched run that fails, or whose output
    does not have one row per tensor (a model that says it takes a batch and does not), is done
    again one tensor at a time, so that an error is the tensor's own and its batch-mates still
    get their outputs.
    """
    output_name = session.get_outputs()[0].name
    input_name = session.get_inputs()[0].name
    if len(tensors) > 1 and models.takes_batches(session):
        try:
            (stacked,) = session.run([output_name], {input_name: np.concatenate(tensors)})
        except Exception:
            stacked = None
        if stacked is not None and np.ndim(stacked) > 0 and len(stacked) == len(tensors):
            return [stacked[i : i + 1] for i in range(len(tensors))]
    outputs: list[NDArray[Any] | Exception] = []
    for tensor in tensors:
        try:
            outputs.append(session.run([output_name], {input_name: tensor})[0])
        except Exception as exc:
            outputs.append(exc)
    return outputs


def vectors(
    spec: ModelSpec, tensors: Sequence[Vector], expected_dim: int, *, cls_token: bool = False
) -> list[Vector | Exception]:
    """The raw (not normalised) embedding of each tensor, or why it has none (the model's error,
    WrongModel), in order; ModelUnavailable if the model cannot be had."""
    session = models.session(spec)
    results: list[Vector | Exception] = []
    for output in first_outputs(session, tensors):
        if isinstance(output, Exception):
            results.append(output)
            continue
        vector = to_vector(output, cls_token=cls_token)
        try:
            check_dim(vector, expected_dim, spec)
        except WrongModel as exc:
            results.append(exc)
            continue
        results.append(vector)
    return results


def embed(
    spec: ModelSpec,
    image: Image.Image,
    prep: Preprocess,
    expected_dim: int,
    *,
    normalize: bool,
    cls_token: bool = False,
) -> Vector:
    """The embedding of `image` by the model of `spec`; ModelUnavailable if it cannot be had."""
    session = models.session(spec)
    tensor = to_tensor(image, prep, input_size(session, prep))
    (vector,) = vectors(spec, [tensor], expected_dim, cls_token=cls_token)
    if isinstance(vector, Exception):
        raise vector
    return l2_normalise(vector) if normalize else vector


def save(vector: Vector, target: Path) -> None:
    """Write a float32 1-D .npy at exactly `target` (given a path, numpy would add a missing .npy
    suffix, and the file would not be where params.output_path says)."""
    with open(target, "wb") as f:
        np.save(f, np.asarray(vector, dtype=np.float32).reshape(-1))
