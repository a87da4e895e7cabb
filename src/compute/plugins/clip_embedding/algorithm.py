"""The MobileCLIP-S2 image embedding of a picture (cl_ml_tools' clip_embedder, same pre-processing)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from compute.plugins import embedding, models
from compute.plugins.media import open_image
from compute.plugins.models import MODELS

SPEC = MODELS["clip_embedding"]
DIM = 512
#: 256x256 unless the model's input shape says otherwise; bicubic, CLIP mean/std, NCHW.
PREPROCESS = embedding.Preprocess(
    (256, 256), Image.Resampling.BICUBIC, embedding.CLIP_MEAN, embedding.CLIP_STD
)


def clip_embedding(source: Path, *, normalize: bool = True) -> embedding.Vector:
    """The image's 512-d embedding, unit length when `normalize`."""
    models.session(SPEC)  # a missing model fails the job before the image is decoded
    return embedding.embed(SPEC, open_image(source, "RGB"), PREPROCESS, DIM, normalize=normalize)
