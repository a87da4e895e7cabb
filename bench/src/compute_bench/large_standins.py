"""Stand-ins with the real networks' shapes and arithmetic, for what batching would do to them.

No real weights are on this machine. The tiny stand-ins (compute_bench.standins) measure the
plugins' pre- and post-processing, not a network; these have the real models' layer shapes and
random weights, so ONNX Runtime does the same kind and amount of arithmetic per image as it
would on the real model, and their time at batch 1 against batch 8 is ONNX Runtime's batching
behaviour on this CPU for that kind of network:

* ViT-B/32 (CLIP's image tower): 32x32 patches of 224x224 -> 49 tokens of width 768, 12 heads,
  MLP 3072, `layers` of its 12 transformer layers (pre-norm, GELU as x*sigmoid(1.702x));
* DINOv2 ViT-S/14: 14x14 patches of 224x224 -> 256 tokens of width 384, 6 heads, MLP 1536;
* ArcFace IResNet-50 (InsightFace's w600k_r50): 112x112, a 3x3 stem of 64 channels, then
  [3, 4, 14, 3] basic blocks of 64, 128, 256, 512 channels (two 3x3 convolutions each, the
  first block of each stage at stride 2 with a 1x1 projection), 512x7x7 -> 512. Batch norms are
  left out (ONNX Runtime folds them into the convolutions of a real export).

The CLS token is left out (49 and 256 tokens instead of 50 and 257): one token in 50 and 257.
`flops` counts multiply-adds x 2 of the convolutions and matrix products, per image; a ViT run
with fewer layers has its times scaled by the real network's arithmetic over the graph's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class LargeModel:
    name: str
    path: Path
    #: [3, H, W] of one image.
    image: tuple[int, int, int]
    #: Multiply-adds x 2 per image, in this graph.
    flops: int
    #: The real network's arithmetic over this graph's (1 for full depth): what its times are
    #: multiplied by.
    scale: float
    params: int


class _Graph:
    def __init__(self, seed: int) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.rng = np.random.default_rng(seed)
        self.flops = 0
        self.params = 0
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        from onnx import numpy_helper

        name = self.name("w")
        value = (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        self.params += value.size
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def save(self, path: Path, source: str, output: str, in_shape: list[Any], out_shape: list[Any]) -> None:
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes,
            path.stem,
            [helper.make_tensor_value_info(source, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compute-bench"
        )
        model.ir_version = IR_VERSION
        onnx.save(model, str(path))


def vit(
    path: Path,
    name: str,
    *,
    size: int,
    patch: int,
    width: int,
    heads: int,
    mlp: int,
    layers: int,
    real_layers: int = 12,
    seed: int = 0,
) -> LargeModel:
    """A pre-norm ViT encoder of `layers` layers, dynamic batch, mean-pooled to [N, width]."""
    g = _Graph(seed)
    tokens = (size // patch) ** 2
    head = width // heads
    x = g.op("Conv", ["image", g.weight((width, 3, patch, patch), 3 * patch * patch)], strides=[patch, patch])
    g.flops += 2 * tokens * width * 3 * patch * patch
    embedding = g.flops
    x = g.op("Reshape", [x, g.const([0, width, tokens])])
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [N, T, D]
    x = g.op("Add", [x, g.weight((1, tokens, width), 1)])
    ones, zeros = g.const(np.ones(width), np.float32), g.const(np.zeros(width), np.float32)

    def linear(h: str, d_in: int, d_out: int) -> str:
        g.flops += 2 * tokens * d_in * d_out
        return g.op("MatMul", [h, g.weight((d_in, d_out), d_in)])

    def split_heads(h: str) -> str:
        h = g.op("Reshape", [h, g.const([0, tokens, heads, head])])
        return g.op("Transpose", [h], perm=[0, 2, 1, 3])  # [N, H, T, d]

    scale = g.const(1.0 / np.sqrt(head), np.float32)
    for _ in range(layers):
        h = g.op("LayerNormalization", [x, ones, zeros], axis=-1)
        q, k, v = (split_heads(linear(h, width, width)) for _ in range(3))
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        attended = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        g.flops += 2 * 2 * heads * tokens * tokens * head
        merged = g.op("Transpose", [attended], perm=[0, 2, 1, 3])
        merged = g.op("Reshape", [merged, g.const([0, tokens, width])])
        x = g.op("Add", [x, linear(merged, width, width)])
        h = g.op("LayerNormalization", [x, ones, zeros], axis=-1)
        h = linear(h, width, mlp)
        h = g.op("Mul", [h, g.op("Sigmoid", [g.op("Mul", [h, g.const(1.702, np.float32)])])])
        x = g.op("Add", [x, linear(h, mlp, width)])
    out = g.op("ReduceMean", [x], axes=[1], keepdims=0)
    g.save(path, "image", out, ["batch", 3, size, size], ["batch", width])
    # Time taken as proportional to arithmetic: the patch embedding once, the layers x 12 / layers.
    real = embedding + (g.flops - embedding) * real_layers // layers
    return LargeModel(name, path, (3, size, size), g.flops, real / g.flops, g.params)


def iresnet(path: Path, name: str, *, blocks: tuple[int, ...] = (3, 4, 14, 3), seed: int = 0) -> LargeModel:
    """IResNet (ArcFace's backbone) at 112x112: stem, 4 stages of basic blocks, FC to 512."""
    g = _Graph(seed)
    side = 112

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int, out_side: int) -> str:
        g.flops += 2 * out_side * out_side * c_out * c_in * k * k
        pad = k // 2
        return g.op(
            "Conv",
            [x, g.weight((c_out, c_in, k, k), c_in * k * k), g.const(np.zeros(c_out), np.float32)],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def prelu(x: str, c: int) -> str:
        return g.op("PRelu", [x, g.const(np.full((c, 1, 1), 0.25), np.float32)])

    x = prelu(conv("image", 3, 64, 3, 1, side), 64)
    c_in = 64
    for stage, (count, c_out) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        for b in range(count):
            stride = 2 if b == 0 else 1
            out_side = side // 2 if b == 0 else side
            h = prelu(conv(x, c_in, c_out, 3, 1, side), c_out)
            h = conv(h, c_out, c_out, 3, stride, out_side)
            shortcut = conv(x, c_in, c_out, 1, stride, out_side) if b == 0 else x
            x = g.op("Add", [h, shortcut])
            c_in, side = c_out, out_side
        del stage
    flat = g.op("Flatten", [x], axis=1)
    g.flops += 2 * 512 * side * side * 512
    out = g.op("MatMul", [flat, g.weight((512 * side * side, 512), 512 * side * side)])
    g.save(path, "image", out, ["batch", 3, 112, 112], ["batch", 512])
    return LargeModel(name, path, (3, 112, 112), g.flops, 1.0, g.params)


def build_all(folder: Path, transformer_layers: int = 4, *, quick: bool = False) -> list[LargeModel]:
    """The three networks of the embedding tasks, written into `folder`. quick: IResNet with one
    block per stage (a smoke test's figures, not ArcFace's)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        vit(
            folder / "vit_b32.onnx",
            "ViT-B/32 (CLIP)",
            size=224,
            patch=32,
            width=768,
            heads=12,
            mlp=3072,
            layers=transformer_layers,
        ),
        vit(
            folder / "vit_s14.onnx",
            "DINOv2 ViT-S/14",
            size=224,
            patch=14,
            width=384,
            heads=6,
            mlp=1536,
            layers=transformer_layers,
        ),
        iresnet(
            folder / "iresnet50.onnx", "ArcFace IResNet-50", blocks=(1, 1, 1, 1) if quick else (3, 4, 14, 3)
        ),
    ]
