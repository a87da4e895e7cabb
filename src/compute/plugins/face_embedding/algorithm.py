"""The ArcFace embedding of a face crop, and how sharp the crop is.

Two published ArcFace exports take different inputs, so the layout is read from the model:
onnx-community's arcface.onnx (what cl_ml_tools downloads) takes NHWC [1,112,112,3] RGB
scaled to 0..1; InsightFace's w600k_r50.onnx takes NCHW [1,3,112,112] RGB as (x - 127.5) / 127.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from compute.plugins import embedding, models
from compute.plugins.media import open_image
from compute.plugins.models import MODELS

SPEC = MODELS["face_embedding"]
DIM = 512
SIZE = (112, 112)
#: onnx-community arcface.onnx: channels last, 0..1, no mean/std.
NHWC_0_1 = embedding.Preprocess(SIZE, Image.Resampling.BILINEAR, layout="NHWC")
#: InsightFace: channels first, (x/255 - 0.5) / 0.5 == (x - 127.5) / 127.5.
NCHW_PLUS_MINUS_1 = embedding.Preprocess(
    SIZE, Image.Resampling.BILINEAR, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), layout="NCHW"
)
#: The variance of the Laplacian that counts as fully sharp (cl_ml_tools' scale).
SHARP_VARIANCE = 100.0


@dataclass(frozen=True)
class FaceEmbedding:
    vector: embedding.Vector
    #: 0 (flat or blurred) .. 1 (sharp).
    quality_score: float


def preprocessing(layout: embedding.Layout) -> embedding.Preprocess:
    return NHWC_0_1 if layout == "NHWC" else NCHW_PLUS_MINUS_1


def quality_score(image: Image.Image) -> float:
    """Variance of the Laplacian of the grayscale image / 100, capped at 1 (cl_ml_tools' measure:
    kernel [[0,1,0],[1,-4,1],[0,1,0]], mirrored borders, i.e. scipy's convolve2d "same"/"symm")."""
    gray = np.asarray(image.convert("L"))
    laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    _mean, std = cv2.meanStdDev(laplacian)
    return min(float(std[0, 0]) ** 2 / SHARP_VARIANCE, 1.0)


def face_embedding(source: Path, *, normalize: bool = True) -> FaceEmbedding:
    """The crop's 512-d embedding (unit length when `normalize`) and its quality score, measured
    on the crop as uploaded (before resizing)."""
    session = models.session(SPEC)  # a missing model fails the job before the image is decoded
    image = open_image(source, "RGB")
    prep = preprocessing(embedding.input_layout(session))
    vector = embedding.embed(SPEC, image, prep, DIM, normalize=normalize)
    return FaceEmbedding(vector, quality_score(image))
