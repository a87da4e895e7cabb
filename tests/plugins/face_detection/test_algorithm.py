"""YuNet decoding, NMS, thresholds, scaling and alignment, end to end through a tiny ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from PIL import Image

from compute.plugins.environment import PluginEnvironment
from compute.plugins.face_detection.algorithm import (
    ARCFACE_TEMPLATE,
    CROP_SIZE,
    LANDMARK_NAMES,
    AlignmentFailed,
    UnexpectedModel,
    align,
    decode,
    describe,
    detect,
    load_bgr,
    suppress,
)
from compute_bench.yunet_model import build, expected, mark

#: BGR colours of the dots drawn at the landmarks, in LANDMARK_NAMES order.
DOT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def session(**options: object) -> ort.InferenceSession:
    return ort.InferenceSession(build(**options), providers=["CPUExecutionProvider"])  # type: ignore[arg-type]


def blank(width: int = 640, height: int = 480) -> npt.NDArray[np.uint8]:
    return np.zeros((height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def dynamic() -> ort.InferenceSession:
    return session()


@pytest.mark.parametrize("batchless", [False, True], ids=["batch-dim", "no-batch-dim"])
def test_each_stride_decodes_box_landmarks_and_score_at_its_cell(batchless: bool) -> None:
    image = blank()
    mark(image, 32, row=1, col=1, value=255)
    mark(image, 16, row=2, col=20, value=230)
    mark(image, 8, row=40, col=50, value=204)

    faces = detect(session(batchless=batchless), image, confidence_threshold=0.5, nms_threshold=0.4)

    # Best first; a row/column mix-up or a wrong index = r*cols+c would move every face.
    assert [round(f.score, 4) for f in faces] == [1.0, round(230 / 255, 4), round(204 / 255, 4)]
    for face, (stride, row, col) in zip(faces, [(32, 1, 1), (16, 2, 20), (8, 40, 50)], strict=True):
        want = expected(stride, row, col)
        np.testing.assert_allclose(face.box, want.box, atol=1e-3)
        np.testing.assert_allclose(face.landmarks, want.landmarks, atol=1e-3)


def test_normalised_output_is_clamped_to_the_image(dynamic: ort.InferenceSession) -> None:
    image = blank(640, 480)
    mark(image, 32, row=10, col=17)  # the 224-px face runs past the right and bottom edges

    [face] = detect(dynamic, image, 0.5, 0.4)
    out = describe(face, 640, 480, "faces/face_0.png")

    want = expected(32, 10, 17)
    assert out["bbox"] == pytest.approx(
        {"x1": want.box[0] / 640, "y1": want.box[1] / 480, "x2": 1.0, "y2": 1.0}
    )
    assert list(out) == ["bbox", "confidence", "landmarks", "file_path"]
    assert out["confidence"] == pytest.approx(1.0)
    assert list(out["landmarks"]) == list(LANDMARK_NAMES)
    for name, (x, y) in zip(LANDMARK_NAMES, want.landmarks, strict=True):
        assert out["landmarks"][name] == pytest.approx([min(x / 640, 1.0), min(y / 480, 1.0)])
    assert out["landmarks"]["mouth_left"] == [1.0, 1.0]  # beyond both edges: clamped


def test_nms_removes_the_weaker_of_two_overlapping_faces(dynamic: ort.InferenceSession) -> None:
    image = blank()
    mark(image, 32, row=1, col=2, value=204)
    mark(image, 32, row=1, col=1, value=255)  # the same face one cell left: IoU 0.75

    [kept] = detect(dynamic, image, 0.5, nms_threshold=0.4)
    both = detect(dynamic, image, 0.5, nms_threshold=0.8)

    np.testing.assert_allclose(kept.box, expected(32, 1, 1).box, atol=1e-3)
    assert len(both) == 2 and both[0].score > both[1].score


def test_faces_below_the_confidence_threshold_are_dropped(dynamic: ort.InferenceSession) -> None:
    image = blank()
    mark(image, 32, row=1, col=1, value=153)  # score 0.6

    assert detect(dynamic, image, 0.7, 0.4) == []
    [face] = detect(dynamic, image, 0.5, 0.4)
    assert face.score == pytest.approx(0.6, abs=1e-4)


def test_a_large_image_is_scaled_down_and_mapped_back(dynamic: ort.InferenceSession) -> None:
    image = blank(640, 480)
    # At max_side 320 the model sees 320x240 (padded to 320x256): a model cell is 64 image pixels.
    mark(image, 32, row=2, col=3, cell=64)

    [face] = detect(dynamic, image, 0.5, 0.4, max_side=320)

    want = expected(32, 2, 3)
    np.testing.assert_allclose(face.box, np.array(want.box) * 2, atol=1e-2)
    np.testing.assert_allclose(face.landmarks, want.landmarks * 2, atol=1e-2)


def test_a_fixed_input_model_gets_the_image_letterboxed() -> None:
    image = blank(320, 200)
    # 320x200 fits 640x640 at scale 2 (640x400, padded below): a model cell is 16 image pixels.
    mark(image, 32, row=1, col=3, cell=16)

    faces = detect(session(fixed=(640, 640)), image, 0.5, 0.4)

    assert len(faces) == 1
    want = expected(32, 1, 3)
    np.testing.assert_allclose(faces[0].box, np.array(want.box) / 2, atol=1e-2)
    np.testing.assert_allclose(faces[0].landmarks, want.landmarks / 2, atol=1e-2)


def test_the_aligned_crop_puts_each_landmark_on_the_arcface_template(dynamic: ort.InferenceSession) -> None:
    image = blank()
    mark(image, 32, row=1, col=1)
    want = expected(32, 1, 1)
    for (x, y), colour in zip(want.landmarks, DOT_COLOURS, strict=True):
        cx, cy = round(x), round(y)
        image[cy - 2 : cy + 3, cx - 2 : cx + 3] = colour  # too small to be a face of its own

    [face] = detect(dynamic, image, 0.5, 0.4)
    crop = align(image, face.landmarks)

    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    for (tx, ty), colour in zip(ARCFACE_TEMPLATE, DOT_COLOURS, strict=True):
        np.testing.assert_allclose(crop[round(ty), round(tx)], colour, atol=40)
    # The face is 224 px, the crop 112: the marked top-left cell shrinks to the crop's corner.
    assert crop[4, 4, 2] > 200 and crop[60, 20].max() == 0


def test_alignment_of_degenerate_landmarks_fails_as_a_job_error() -> None:
    with pytest.raises(AlignmentFailed):
        align(blank(), np.full((5, 2), 10.0, np.float32))


def test_a_model_without_yunet_outputs_is_refused() -> None:
    with pytest.raises(UnexpectedModel, match="cls_16"):
        detect(session(rename={"cls_16": "scores"}), blank(), 0.5, 0.4)


def test_an_output_of_the_wrong_size_is_refused() -> None:
    outputs = {
        f"{k}_{s}": np.zeros((1, 3, w), np.float32)
        for s in (8, 16, 32)
        for k, w in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
    }
    with pytest.raises(UnexpectedModel, match=r"cls_8 has shape \[1, 3, 1\], expected \[1, 4, 1\]"):
        decode(outputs, 16, 16, 0.5)


def test_suppress_keeps_disjoint_boxes_best_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.8], np.float32)
    assert suppress(boxes, scores, 0.4) == [1, 2]
    assert suppress(boxes, scores, 0.4, top_k=1) == [1]


def test_load_bgr_returns_opencv_channel_order(plugin_env: PluginEnvironment, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    image = load_bgr(path)
    assert image.shape == (3, 4, 3) and tuple(image[0, 0]) == (0, 0, 255)
