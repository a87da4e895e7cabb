"""Test images and an independent numpy version of the upstream embedders' pre-processing."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image

# The upstream constants, written out again here so that a typo in the plugin is caught.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def jpeg_bytes(pixels: NDArray[np.uint8], quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decoded(content: bytes) -> Image.Image:
    """The upload as a plugin decodes it (RGB)."""
    return Image.open(io.BytesIO(content)).convert("RGB")


def reference_tensor(
    image: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling,
    mean: list[float],
    std: list[float],
    layout: str = "NCHW",
) -> NDArray[np.float64]:
    """What cl_ml_tools feeds its models: resized straight to size=(width, height), /255,
    (x - mean) / std, batch of one, channels first (NCHW) or last (NHWC)."""
    pixels = np.asarray(image.convert("RGB").resize(size, resample), dtype=np.float64) / 255.0
    pixels = (pixels - np.array(mean)) / np.array(std)
    if layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    batch: NDArray[np.float64] = pixels[np.newaxis]
    return batch


def unit(vector: NDArray[np.floating]) -> NDArray[np.float64]:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    return v / np.linalg.norm(v)
