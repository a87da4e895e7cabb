"""The CL Server SDK's face_detection request replayed on a real photo, and every field it reads.

The SDK (cl_client.plugins.face_detection, its integration test) posts only `file` and
`priority`, then reads task_output.faces[*].{bbox, confidence, landmarks, file_path} and
downloads faces[0].file_path. The tiny stand-in model finds "faces" in the photo's bright
areas; what is checked here is the shape and bounds of what the SDK gets back.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image
from skimage import data

from compute.plugins.face_detection.task import MODEL
from compute_bench.yunet_model import build
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job

LANDMARKS = {"right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left"}


def astronaut_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=90)  # type: ignore[no-untyped-call]
    # The SDK's test copies end with random bytes after the image data.
    return buf.getvalue() + os.urandom(16)


def in_unit(value: object) -> bool:
    return isinstance(value, float | int) and 0.0 <= value <= 1.0


async def test_sdk_request_and_every_field_it_reads(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    (models_dir / MODEL.filename).write_bytes(build())
    await start_worker(tasks=("face_detection",))

    job = await run_job(server, "face_detection", astronaut_jpeg(), "test_image_face_multiple.jpg")

    assert job["status"] == "completed" and job["progress"] == 100
    assert isinstance(job["created_at"], int) and job["error_message"] is None
    assert job["params"]["confidence_threshold"] == 0.7 and job["params"]["nms_threshold"] == 0.4
    output = job["task_output"]
    assert set(output) == {"faces", "num_faces", "image_width", "image_height"}
    assert (output["image_width"], output["image_height"]) == (512, 512)
    faces = output["faces"]
    assert isinstance(faces, list) and len(faces) > 0 and output["num_faces"] == len(faces)
    for index, face in enumerate(faces):
        assert set(face["bbox"]) == {"x1", "y1", "x2", "y2"}
        assert all(in_unit(v) for v in face["bbox"].values()), face["bbox"]
        assert face["bbox"]["x1"] <= face["bbox"]["x2"] and face["bbox"]["y1"] <= face["bbox"]["y2"]
        assert in_unit(face["confidence"]) and face["confidence"] >= 0.7
        assert set(face["landmarks"]) == LANDMARKS
        for point in face["landmarks"].values():
            assert isinstance(point, list) and len(point) == 2 and all(in_unit(v) for v in point), point
        assert face["file_path"] == f"faces/face_{index}.png"
    confidences = [face["confidence"] for face in faces]
    assert confidences == sorted(confidences, reverse=True)

    for face in (faces[0], faces[-1]):
        crop = Image.open(io.BytesIO(await download(server, job["job_id"], face["file_path"])))
        crop.load()
        assert crop.width > 0 and crop.height > 0 and crop.size == (112, 112)
