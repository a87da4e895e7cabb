"""Tiny stand-in ONNX models with the real models' input/output names and shapes (`--stand-in-models`).

No real weights are on this machine, nor downloadable from it. A row measured with a stand-in
measures the plugin's pre- and post-processing (decode, resize, normalise, tensor layout, NMS,
alignment, saving) and the service's overhead, not the real network: a real MobileCLIP, DINOv2,
YuNet or ArcFace spends far more time (and memory) in ONNX Runtime than these few pooling and
matrix operations do. The graphs are the tests' too (compute_bench.onnx_models and
compute_bench.yunet_model, which the tests import):

* embedders: average-pool the image to an 8x8 grid per channel, multiply by a fixed random matrix;
  MobileCLIP-S2 [1,3,256,256] -> [1,512] (`image` -> `image_embeds`), DINOv2 [1,3,224,224] ->
  [1,5,384] (CLS first; the real export has 257 tokens), ArcFace NHWC [1,112,112,3] -> [1,512]
  (`input_1` -> `embedding`);
* YuNet 2023mar: dynamic [1,3,H,W] input `input`, its 12 outputs cls/obj/bbox/kps x strides 8,
  16, 32; a cell's score is the mean of one colour channel there (stride 8: blue, 16: green,
  32: red) over 255, scaled by SCORE_SCALE, so only the most saturated areas of a photo pass
  the default threshold of 0.7 and the plugin finds a handful of "faces" (8 in the standard
  photo, where the real YuNet finds 1), aligns and saves them.

Building them needs the `onnx` package (a development dependency of the workspace).
"""

from __future__ import annotations

from pathlib import Path

from compute.plugins.models import MODELS

LABEL = "stand-in model: measures pre/post-processing and service overhead, not the real network"
#: YuNet stand-in: score = channel mean / 255 * SCORE_SCALE.
SCORE_SCALE = 0.71


def write(task: str, folder: Path, *, dynamic_batch: bool = False) -> Path:
    """Write the stand-in for `task`'s model into `folder`, under the real model's file name.
    dynamic_batch: an embedder's batch dimension is a symbol (the model takes several images
    in one run, as exports with dynamic axes do), not 1."""
    # Imported here: they need the `onnx` package, which only building a stand-in does.
    from compute_bench import onnx_models, yunet_model

    folder.mkdir(parents=True, exist_ok=True)
    if task == "clip_embedding":
        onnx_models.clip(folder, dynamic_batch=dynamic_batch)
    elif task == "dino_embedding":
        onnx_models.dino(folder, dynamic_batch=dynamic_batch)
    elif task == "face_embedding":
        onnx_models.arcface(folder, dynamic_batch=dynamic_batch)
    elif task == "face_detection":
        (folder / MODELS[task].filename).write_bytes(yunet_model.build(score_scale=SCORE_SCALE))
    else:
        raise KeyError(task)
    path = folder / MODELS[task].filename
    assert path.is_file(), f"{task}'s stand-in is not named as the registry names its model"
    return path
