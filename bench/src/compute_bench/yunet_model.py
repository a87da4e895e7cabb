"""A tiny YuNet-shaped ONNX model whose detections a test places by drawing on the image (the
tests' and the benchmark's stand-in, compute_bench.standins; building it needs the `onnx` package).

It has YuNet 2023mar's input and its 12 outputs with their names and shapes. Each stride reads
one colour channel: the mean of channel B (stride 8), G (stride 16) or R (stride 32) over a grid
cell, divided by 255, is both `cls` and `obj` of that cell, so its score sqrt(cls*obj) is that
mean. A block of value v filling one cell in that channel is a face of score v/255 there.

Box and landmarks are the same for every cell (a Conv with zero weights: its bias): the face is a
square of 7 cells whose top-left corner is the cell's top-left corner, and the landmarks sit
where the ArcFace template puts them in that square (scaled by 7*stride/112).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from compute.plugins.face_detection.algorithm import ARCFACE_TEMPLATE, CROP_SIZE, STRIDES

#: The colour channel (BGR index) each stride reads.
CHANNEL = {8: 0, 16: 1, 32: 2}
#: The face is this many cells wide and high.
FACE_CELLS = 7
#: (b0, b1, b2, b3): centre 3.5 cells right and down of the cell's corner, 7 cells wide and high.
BBOX = (FACE_CELLS / 2, FACE_CELLS / 2, math.log(FACE_CELLS), math.log(FACE_CELLS))
#: Landmark offsets in cells from the cell's corner: the template scaled to a 7-cell face.
KPS = tuple(float(v) for v in (ARCFACE_TEMPLATE * FACE_CELLS / CROP_SIZE).reshape(-1))


def build(
    fixed: tuple[int, int] | None = None,
    batchless: bool = False,
    rename: dict[str, str] | None = None,
    score_scale: float = 1.0,
) -> bytes:
    """The model as bytes. `fixed`: a static (height, width) input instead of a dynamic one;
    `batchless`: outputs [N, k] instead of [1, N, k]; `rename`: output names to change;
    `score_scale`: a cell's score is its channel mean / 255 times this."""
    rename = rename or {}
    height: int | str = fixed[0] if fixed else "height"
    width: int | str = fixed[1] if fixed else "width"
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    outputs: list[onnx.ValueInfoProto] = []

    def shape_const(name: str, dims: list[int]) -> None:
        inits.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))

    for stride in STRIDES:
        cells: int | str = f"cells_{stride}" if not fixed else (fixed[0] // stride) * (fixed[1] // stride)
        score_w = np.zeros((1, 3, stride, stride), np.float32)
        score_w[0, CHANNEL[stride]] = score_scale / (stride * stride * 255.0)
        inits.append(numpy_helper.from_array(score_w, f"score_w_{stride}"))
        kernel = [stride, stride]
        nodes.append(
            helper.make_node(
                "Conv",
                ["input", f"score_w_{stride}"],
                [f"score_{stride}"],
                kernel_shape=kernel,
                strides=kernel,
            )
        )
        for kind, width_k, bias in (("bbox", 4, BBOX), ("kps", 10, KPS)):
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
                    kernel_shape=kernel,
                    strides=kernel,
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
            name = rename.get(f"{kind}_{stride}", f"{kind}_{stride}")
            dims = [-1, width_k] if batchless else [1, -1, width_k]
            shape_const(f"{name}_shape", dims)
            nodes.append(helper.make_node("Reshape", [f"{source}_{stride}", f"{name}_shape"], [name]))
            out_shape: list[int | str] = [cells, width_k] if batchless else [1, cells, width_k]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(
        nodes,
        "tiny_yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


@dataclass(frozen=True)
class Expected:
    """Where the tiny model puts the face of one marked cell, in pixels of the model's input."""

    box: tuple[float, float, float, float]
    #: (5, 2) in LANDMARK_NAMES order.
    landmarks: npt.NDArray[np.float64]


def expected(stride: int, row: int, col: int) -> Expected:
    x0, y0 = col * stride, row * stride
    side = FACE_CELLS * stride
    landmarks = np.array([x0, y0], np.float64) + ARCFACE_TEMPLATE.astype(np.float64) * side / CROP_SIZE
    return Expected((x0, y0, x0 + side, y0 + side), landmarks)


def mark(
    image: npt.NDArray[np.uint8], stride: int, row: int, col: int, value: int = 255, cell: int | None = None
) -> None:
    """Fill grid cell (row, col) of `stride` with `value` in the stride's channel. `cell`: the cell's
    size in image pixels when the image is scaled before the model sees it (default: stride)."""
    size = cell or stride
    image[row * size : (row + 1) * size, col * size : (col + 1) * size, CHANNEL[stride]] = value
