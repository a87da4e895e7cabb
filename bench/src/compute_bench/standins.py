"""Tiny stand-in ONNX models with the real models' input/output names and shapes (`--stand-in-models`).

No real weights are on this machine, nor downloadable from it. A row measured with a stand-in
measures the plugin's pre- and post-processing (decode, resize, normalise, tensor layout, NMS,
alignment, saving) and the service's overhead, not the real network: a real MobileCLIP, DINOv2,
YuNet or ArcFace spends far more time (and memory) in ONNX Runtime than these few pooling and
matrix operations do. The graphs are those of the tests (tests/plugins/onnx_models.py and
tests/plugins/face_detection/yunet_model.py), rebuilt here because the tests are not installed:

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

import math
from pathlib import Path
from typing import Any

import numpy as np

from compute.plugins.models import MODELS

LABEL = "stand-in model: measures pre/post-processing and service overhead, not the real network"
OPSET = 17
IR_VERSION = 8
#: YuNet stand-in: score = channel mean / 255 * SCORE_SCALE.
SCORE_SCALE = 0.71


def _embedder(
    path: Path,
    *,
    size: tuple[int, int],
    dim: int,
    layout: str,
    input_name: str,
    output_name: str,
    tokens: int = 0,
    grid: int = 8,
    seed: int = 0,
    batch: int | str = 1,
) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    height, width = size
    weight = np.random.default_rng(seed).normal(size=(3 * grid * grid, max(tokens, 1) * dim))
    in_shape = [batch, 3, height, width] if layout == "NCHW" else [batch, height, width, 3]
    out_shape = [batch, tokens, dim] if tokens else [batch, dim]
    nodes = []
    source = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    kernel = [height // grid, width // grid]
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], kernel_shape=kernel, strides=kernel),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["projected" if tokens else output_name]),
    ]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "weight")]
    if tokens:
        nodes.append(helper.make_node("Reshape", ["projected", "token_shape"], [output_name]))
        inits.append(numpy_helper.from_array(np.array([-1, tokens, dim], np.int64), "token_shape"))
    graph = helper.make_graph(
        nodes,
        "standin_embedder",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compute-bench stand-in"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _yunet(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compute.plugins.face_detection.algorithm import ARCFACE_TEMPLATE, CROP_SIZE, STRIDES

    channel = {8: 0, 16: 1, 32: 2}
    cells_wide = 7
    bbox = (cells_wide / 2, cells_wide / 2, math.log(cells_wide), math.log(cells_wide))
    kps = tuple(float(v) for v in (ARCFACE_TEMPLATE * cells_wide / CROP_SIZE).reshape(-1))
    nodes, inits, outputs = [], [], []
    for stride in STRIDES:
        score_w = np.zeros((1, 3, stride, stride), np.float32)
        score_w[0, channel[stride]] = SCORE_SCALE / (stride * stride * 255.0)
        inits.append(numpy_helper.from_array(score_w, f"score_w_{stride}"))
        conv: dict[str, Any] = {"kernel_shape": [stride, stride], "strides": [stride, stride]}
        nodes.append(helper.make_node("Conv", ["input", f"score_w_{stride}"], [f"score_{stride}"], **conv))
        for kind, width_k, bias in (("bbox", 4, bbox), ("kps", 10, kps)):
            inits.append(
                numpy_helper.from_array(
                    np.zeros((width_k, 3, stride, stride), np.float32), f"{kind}_w_{stride}"
                )
            )
            inits.append(numpy_helper.from_array(np.array(bias, np.float32), f"{kind}_b_{stride}"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    ["input", f"{kind}_w_{stride}", f"{kind}_b_{stride}"],
                    [f"{kind}_map_{stride}"],
                    **conv,
                )
            )
            nodes.append(
                helper.make_node(
                    "Transpose", [f"{kind}_map_{stride}"], [f"{kind}_hwc_{stride}"], perm=[0, 2, 3, 1]
                )
            )
        for kind, source, width_k in (
            ("cls", "score", 1),
            ("obj", "score", 1),
            ("bbox", "bbox_hwc", 4),
            ("kps", "kps_hwc", 10),
        ):
            name = f"{kind}_{stride}"
            inits.append(numpy_helper.from_array(np.array([1, -1, width_k], np.int64), f"{name}_shape"))
            nodes.append(helper.make_node("Reshape", [f"{source}_{stride}", f"{name}_shape"], [name]))
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, f"cells_{stride}", width_k])
            )
    graph = helper.make_graph(
        nodes,
        "standin_yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="compute-bench stand-in"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write(task: str, folder: Path, *, dynamic_batch: bool = False) -> Path:
    """Write the stand-in for `task`'s model into `folder`, under the real model's file name.
    dynamic_batch: an embedder's batch dimension is a symbol (the model takes several images
    in one run, as exports with dynamic axes do), not 1."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODELS[task].filename
    batch: int | str = "batch" if dynamic_batch else 1
    if task == "clip_embedding":
        _embedder(
            path,
            size=(256, 256),
            dim=512,
            layout="NCHW",
            input_name="image",
            output_name="image_embeds",
            seed=1,
            batch=batch,
        )
    elif task == "dino_embedding":
        _embedder(
            path,
            size=(224, 224),
            dim=384,
            layout="NCHW",
            input_name="input",
            output_name="output",
            tokens=5,
            seed=2,
            batch=batch,
        )
    elif task == "face_embedding":
        _embedder(
            path,
            size=(112, 112),
            dim=512,
            layout="NHWC",
            input_name="input_1",
            output_name="embedding",
            seed=3,
            batch=batch,
        )
    elif task == "face_detection":
        _yunet(path)
    else:
        raise KeyError(task)
    return path
