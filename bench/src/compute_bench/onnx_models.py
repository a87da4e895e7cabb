"""Tiny ONNX stand-ins for the embedding models, with the real models' input layouts and output shapes.

No real weights are on test machines, so tests (and the benchmark's stand-ins,
compute_bench.standins) write these under the registry's file names in `models_dir`. Each model
pools the image into a grid of block means and multiplies them by a fixed random matrix: the
output depends on every part of the image, so a wrong resize, channel order, mean/std or layout
changes it, and `TinyEmbedder.expected` computes in numpy what the graph gives for a tensor, to
compare a plugin's output against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Dim = int | str


@dataclass(frozen=True)
class TinyEmbedder:
    path: Path
    layout: str
    #: Pooling grid per side: the image becomes grid x grid block means per channel.
    grid: int
    #: [3 * grid * grid, tokens * dim]
    weight: NDArray[np.float32]
    dim: int
    #: 0: output [1, dim]; T: output [1, T, dim] (a ViT's token sequence, CLS first).
    tokens: int

    def expected(self, tensor: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """What the graph outputs for `tensor` (a batch of one in the model's layout)."""
        x = tensor.astype(np.float64)
        if self.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        n, c, h, w = x.shape
        g = self.grid
        pooled = x.reshape(n, c, g, h // g, g, w // g).mean(axis=(3, 5))
        out: NDArray[np.float64] = pooled.reshape(n, -1) @ self.weight.astype(np.float64)
        return out.reshape(n, self.tokens, self.dim) if self.tokens else out


def embedder(
    path: Path,
    *,
    size: tuple[int, int],
    dim: int,
    layout: str = "NCHW",
    input_name: str = "input",
    output_name: str = "output",
    tokens: int = 0,
    grid: int = 8,
    dynamic: bool = False,
    dynamic_batch: bool = False,
    collapse_batch: bool = False,
    seed: int = 0,
) -> TinyEmbedder:
    """Write a tiny embedding model to `path`.

    size: (height, width) it is built for (a multiple of `grid`). dynamic: declare the batch
    and spatial input dims as symbols (as exports with dynamic axes do); dynamic_batch: the
    batch dim only (an image model exported with a dynamic batch axis). collapse_batch: declare a
    dynamic batch but reshape the output to a batch of one (an export whose graph hard-codes 1).
    """
    height, width = size
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(3 * grid * grid, max(tokens, 1) * dim)).astype(np.float32)
    h_dim: Dim = "height" if dynamic else height
    w_dim: Dim = "width" if dynamic else width
    batch: Dim = "batch" if dynamic or dynamic_batch or collapse_batch else 1
    in_shape: Sequence[Dim] = [batch, 3, h_dim, w_dim] if layout == "NCHW" else [batch, h_dim, w_dim, 3]
    out_shape: Sequence[Dim] = [batch, tokens, dim] if tokens else [batch, dim]

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
    initializers = [numpy_helper.from_array(weight, "weight")]
    if tokens:
        nodes.append(helper.make_node("Reshape", ["projected", "token_shape"], [output_name]))
        initializers.append(numpy_helper.from_array(np.array([-1, tokens, dim], np.int64), "token_shape"))
    if collapse_batch:
        nodes[-1].output[0] = "uncollapsed"
        nodes.append(helper.make_node("Reshape", ["uncollapsed", "one_shape"], [output_name]))
        one = [1, -1, dim] if tokens else [1, -1]
        initializers.append(numpy_helper.from_array(np.array(one, np.int64), "one_shape"))
        out_shape = [1, "collapsed", dim] if tokens else [1, "collapsed"]

    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(out_shape))],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compute-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return TinyEmbedder(path, layout, grid, weight, dim, tokens)


# -- the registry's models, with the real exports' layouts ------------------------------------


def clip(
    models_dir: Path,
    *,
    dim: int = 512,
    dynamic: bool = False,
    dynamic_batch: bool = False,
    collapse_batch: bool = False,
    seed: int = 1,
) -> TinyEmbedder:
    """MobileCLIP-S2 image encoder: [1,3,256,256] -> [1,512] ([N,...] with dynamic_batch)."""
    return embedder(
        models_dir / "mobileclip_s2_image_encoder.onnx",
        size=(256, 256),
        dim=dim,
        input_name="image",
        output_name="image_embeds",
        dynamic=dynamic,
        dynamic_batch=dynamic_batch,
        collapse_batch=collapse_batch,
        seed=seed,
    )


def dino(
    models_dir: Path,
    *,
    dim: int = 384,
    tokens: int = 5,
    dynamic_batch: bool = False,
    collapse_batch: bool = False,
    seed: int = 2,
) -> TinyEmbedder:
    """DINOv2 ViT-S/14: [1,3,224,224] -> [1,T,384], a token sequence with CLS first (the real
    export has T=257: CLS + 16x16 patches; 5 keeps the weights small), or [1,384] with tokens=0
    (exports that return the CLS token only)."""
    return embedder(
        models_dir / "dinov2_vits14.onnx",
        size=(224, 224),
        dim=dim,
        tokens=tokens,
        input_name="input",
        output_name="output",
        dynamic_batch=dynamic_batch,
        collapse_batch=collapse_batch,
        seed=seed,
    )


def arcface(
    models_dir: Path,
    *,
    layout: str = "NHWC",
    dim: int = 512,
    dynamic_batch: bool = False,
    collapse_batch: bool = False,
    seed: int = 3,
) -> TinyEmbedder:
    """ArcFace: onnx-community's NHWC [1,112,112,3] export, or InsightFace's NCHW [1,3,112,112]
    (w600k_r50, installed under the same file name); -> [1,512]."""
    names = ("input_1", "embedding") if layout == "NHWC" else ("input.1", "683")
    return embedder(
        models_dir / "arcface.onnx",
        size=(112, 112),
        dim=dim,
        layout=layout,
        input_name=names[0],
        output_name=names[1],
        dynamic_batch=dynamic_batch,
        collapse_batch=collapse_batch,
        seed=seed,
    )
