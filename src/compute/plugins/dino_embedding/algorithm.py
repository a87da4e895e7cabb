"""The DINOv2 ViT-S/14 embedding of a picture, its CLS token (cl_ml_tools' dino_embedder's pre-processing)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from compute.plugins import embedding, models
from compute.plugins.media import open_image
from compute.plugins.models import MODELS

SPEC = MODELS["dino_embedding"]
DIM = 384
#: 224x224 unless the model's input shape says otherwise; bilinear, ImageNet mean/std, NCHW.
PREPROCESS = embedding.Preprocess(
    (224, 224), Image.Resampling.BILINEAR, embedding.IMAGENET_MEAN, embedding.IMAGENET_STD
)


def dino_embedding(source: Path, *, normalize: bool = True) -> embedding.Vector:
    """The image's 384-d embedding (the CLS token when the model gives all tokens), unit length
    when `normalize`."""
    models.session(SPEC)  # a missing model fails the job before the image is decoded
    return embedding.embed(
        SPEC, open_image(source, "RGB"), PREPROCESS, DIM, normalize=normalize, cls_token=True
    )
