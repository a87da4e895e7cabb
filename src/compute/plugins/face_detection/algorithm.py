"""YuNet face detection decoded in numpy, and ArcFace alignment of the faces found.

YuNet (opencv_zoo's face_detection_yunet_2023mar.onnx) has no anchors: every grid cell of
strides 8, 16 and 32 predicts a class score, an objectness, a box and 5 landmarks relative to
the cell. OpenCV's FaceDetectorYN decodes that in C++; doing it here keeps the decoding
testable with tiny models and lets ONNX Runtime (CUDA when present) run the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from compute.errors import ComputeError
from compute.plugins.media import open_image

FloatArray = npt.NDArray[np.float32]

STRIDES = (8, 16, 32)
#: The order of YuNet's landmarks ("person-relative": the right eye is on the image's left).
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
#: Every output the decoding reads, by the names YuNet 2023mar gives them.
OUTPUT_NAMES = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES)
#: Where ArcFace expects the 5 landmarks in a 112x112 crop (InsightFace's template).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112
#: A model with a dynamic input sees images at most this long (larger ones are scaled down):
#: faces small enough to vanish at this size are too small to be of use, and time grows with area.
MAX_SIDE = 1280
#: YuNet's coarsest stride: a dynamic input is padded to a multiple of it.
PAD_MULTIPLE = 32
#: Candidates NMS considers at most, as OpenCV's FaceDetectorYN does.
TOP_K = 5000


class UnexpectedModel(ComputeError):
    """The model file does not have YuNet 2023mar's outputs."""


class AlignmentFailed(ComputeError):
    """No similarity transform maps a face's landmarks onto the ArcFace template."""


@dataclass(frozen=True)
class Face:
    #: x1, y1, x2, y2 in pixels of the original image.
    box: FloatArray
    score: float
    #: (5, 2) x, y in pixels of the original image, in LANDMARK_NAMES order.
    landmarks: FloatArray


@dataclass(frozen=True)
class ModelInput:
    #: [1, 3, H, W] float32, BGR 0-255, the image at the top left, zeros beyond it.
    blob: FloatArray
    #: Model pixels per image pixel, horizontally and vertically.
    scale_x: float
    scale_y: float


def load_bgr(path: Path) -> npt.NDArray[np.uint8]:
    """The image upright and within the pixel limit, as an HxWx3 BGR array (OpenCV's order)."""
    rgb = np.asarray(open_image(path, mode="RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def fixed_input_size(session: Any) -> tuple[int, int] | None:
    """(height, width) the model insists on, or None when its input size is dynamic."""
    shape = session.get_inputs()[0].shape
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return None


def prepare(
    image: npt.NDArray[np.uint8], fixed: tuple[int, int] | None, max_side: int = MAX_SIDE
) -> ModelInput:
    """The model's input: the image scaled (aspect ratio kept) and zero-padded right and bottom.

    Dynamic input: scaled down to `max_side` if longer, padded to a multiple of 32.
    Fixed input: scaled to fit inside it (letterbox: stretching would distort the faces).
    """
    height, width = image.shape[:2]
    if fixed is None:
        scale = min(1.0, max_side / max(height, width))
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_h = math.ceil(new_h / PAD_MULTIPLE) * PAD_MULTIPLE
        pad_w = math.ceil(new_w / PAD_MULTIPLE) * PAD_MULTIPLE
    else:
        pad_h, pad_w = fixed
        scale = min(pad_w / width, pad_h / height)
        new_w = min(pad_w, max(1, round(width * scale)))
        new_h = min(pad_h, max(1, round(height * scale)))
    resized: npt.NDArray[Any] = image
    if (new_w, new_h) != (width, height):
        shrinking = new_w < width or new_h < height
        resized = cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    canvas = np.zeros((pad_h, pad_w, 3), dtype=np.float32)
    canvas[:new_h, :new_w] = resized
    blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[np.newaxis])
    return ModelInput(blob, new_w / width, new_h / height)


def _rows(outputs: Mapping[str, npt.NDArray[Any]], name: str, cells: int, width: int) -> FloatArray:
    """Output `name` as (cells, width), whether or not it has its batch dimension."""
    value = np.asarray(outputs[name], dtype=np.float32)
    if value.size != cells * width:
        raise UnexpectedModel(
            f"face detection model output {name} has shape {list(value.shape)}, "
            f"expected [1, {cells}, {width}]"
        )
    return value.reshape(cells, width)


def decode(
    outputs: Mapping[str, npt.NDArray[Any]], height: int, width: int, threshold: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes (n, 4: x1 y1 x2 y2), scores (n,) and landmarks (n, 5, 2) of every grid cell whose
    score reaches `threshold`, in pixels of the model's `height` x `width` input."""
    boxes: list[FloatArray] = []
    scores: list[FloatArray] = []
    landmarks: list[FloatArray] = []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        cells = rows * cols
        cls = _rows(outputs, f"cls_{stride}", cells, 1)[:, 0]
        obj = _rows(outputs, f"obj_{stride}", cells, 1)[:, 0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        index = np.flatnonzero(score >= threshold)
        if index.size == 0:
            continue
        bbox = _rows(outputs, f"bbox_{stride}", cells, 4)[index]
        kps = _rows(outputs, f"kps_{stride}", cells, 10)[index].reshape(-1, 5, 2)
        row, col = np.divmod(index, cols)
        row_f, col_f = row.astype(np.float32), col.astype(np.float32)
        cx = (col_f + bbox[:, 0]) * stride
        cy = (row_f + bbox[:, 1]) * stride
        with np.errstate(over="ignore"):
            w = np.exp(bbox[:, 2]) * stride
            h = np.exp(bbox[:, 3]) * stride
        box = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        points = np.stack(
            [(kps[:, :, 0] + col_f[:, None]) * stride, (kps[:, :, 1] + row_f[:, None]) * stride], axis=2
        )
        finite = np.isfinite(box).all(axis=1) & np.isfinite(points).all(axis=(1, 2))
        boxes.append(box[finite].astype(np.float32))
        scores.append(score[index][finite])
        landmarks.append(points[finite])
    if not boxes:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(landmarks).astype(np.float32),
    )


def suppress(boxes: FloatArray, scores: FloatArray, threshold: float, top_k: int = TOP_K) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first.

    A box goes when it overlaps a better one by more than `threshold` (intersection over union),
    as in OpenCV's NMSBoxes; only the `top_k` best candidates are considered.
    """
    order = np.argsort(-scores, kind="stable")[:top_k]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    kept: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        kept.append(best)
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= threshold]
    return kept


def detect(
    session: Any,
    image: npt.NDArray[np.uint8],
    confidence_threshold: float,
    nms_threshold: float,
    max_side: int = MAX_SIDE,
) -> list[Face]:
    """The faces YuNet finds in a BGR image, best first, in the image's pixels."""
    present = {output.name for output in session.get_outputs()}
    missing = [name for name in OUTPUT_NAMES if name not in present]
    if missing:
        raise UnexpectedModel(
            f"face detection model lacks the outputs {', '.join(missing)} (expected YuNet 2023mar)"
        )
    prepared = prepare(image, fixed_input_size(session), max_side)
    values = session.run(list(OUTPUT_NAMES), {session.get_inputs()[0].name: prepared.blob})
    _, _, height, width = prepared.blob.shape
    boxes, scores, landmarks = decode(
        dict(zip(OUTPUT_NAMES, values, strict=True)), height, width, confidence_threshold
    )
    kept = suppress(boxes, scores, nms_threshold)
    back = np.array([prepared.scale_x, prepared.scale_y], dtype=np.float32)
    return [Face(boxes[i] / np.tile(back, 2), float(scores[i]), landmarks[i] / back) for i in kept]


def align(image: npt.NDArray[np.uint8], landmarks: FloatArray) -> npt.NDArray[np.uint8]:
    """The 112x112 crop ArcFace expects: the similarity transform that best maps the 5 landmarks
    onto the ArcFace template, applied to the image (black outside it)."""
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32), ARCFACE_TEMPLATE, ransacReprojThreshold=1000
    )
    if matrix is None or not np.isfinite(matrix).all():
        raise AlignmentFailed("no similarity transform maps the face's landmarks onto the template")
    crop = cv2.warpAffine(image, matrix, (CROP_SIZE, CROP_SIZE), borderValue=0)
    return np.asarray(crop, dtype=np.uint8)


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ComputeError("the face crop could not be encoded as PNG")
    return bytes(encoded.tobytes())


def _unit(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def describe(face: Face, width: int, height: int, file_path: str) -> dict[str, Any]:
    """A face as CL Server reports it: box and landmarks as fractions of the image, clamped to 0-1."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    points: Sequence[FloatArray] = list(face.landmarks)
    return {
        "bbox": {
            "x1": _unit(x1 / width),
            "y1": _unit(y1 / height),
            "x2": _unit(x2 / width),
            "y2": _unit(y2 / height),
        },
        "confidence": _unit(face.score),
        "landmarks": {
            name: [_unit(float(point[0]) / width), _unit(float(point[1]) / height)]
            for name, point in zip(LANDMARK_NAMES, points, strict=True)
        },
        "file_path": file_path,
    }
