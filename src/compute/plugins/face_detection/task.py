"""The face_detection task a worker runs.

A client may ask for every candidate (`confidence_threshold` 0, `nms_threshold` 1): thousands of
faces, about 450 bytes each in `task_output`. The faces kept, best first, are those that fit in
MAX_RESULT_BYTES (result_budget.py); the others are counted in TRUNCATED_FIELD and get no crop.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from compute.plugins import models
from compute.plugins.face_detection.algorithm import (
    AlignmentFailed,
    align,
    describe,
    detect,
    encode_png,
    load_bgr,
)
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams
from compute.plugins.result_budget import item_bytes, most_that_fit, result_limit

MODEL = models.MODELS["face_detection"]
OUTPUT_PATH = "output/face_detection.json"
#: The task_output field that says how many faces were left out, present only when some were.
TRUNCATED_FIELD = "faces_truncated"


def crop_path(index: int) -> str:
    """Where face `index`'s aligned crop goes, relative to the job folder (CL Server's layout)."""
    return f"faces/face_{index}.png"


class FaceDetectionParams(TaskParams):
    confidence_threshold: float = Field(0.7, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.4, ge=0.0, le=1.0)


class FaceDetectionTask(PluginTask):
    name = "face_detection"
    params = FaceDetectionParams

    def unavailable(self) -> str | None:
        return models.problem(MODEL)

    async def run(self, files: JobFiles, params: FaceDetectionParams, progress: Progress) -> dict[str, Any]:
        session = models.session(MODEL)
        image = load_bgr(files.path(params.input_path))
        progress(10)
        faces = detect(session, image, params.confidence_threshold, params.nms_threshold)
        progress(60)
        height, width = image.shape[:2]
        described = [describe(face, width, height, crop_path(i)) for i, face in enumerate(faces)]
        limit = result_limit()
        kept, output = most_that_fit(
            [item_bytes(face) for face in described],
            lambda count: detection_output(described[:count], len(described), width, height, limit),
            limit,
        )
        for index, face in enumerate(faces[:kept]):
            try:
                crop = align(image, face.landmarks)
            except AlignmentFailed as exc:
                raise AlignmentFailed(f"face {index}: {exc}") from None
            files.output(crop_path(index)).write_bytes(encode_png(crop))
        files.output(params.output_path).write_text(json.dumps(output, indent=2))
        progress(100)
        return output


def detection_output(
    faces: list[dict[str, Any]], found: int, width: int, height: int, limit: int
) -> dict[str, Any]:
    """task_output with `faces` (the best of the `found`), and TRUNCATED_FIELD if some were left out."""
    output: dict[str, Any] = {
        "faces": faces,
        "num_faces": len(faces),
        "image_width": width,
        "image_height": height,
    }
    if len(faces) < found:
        output[TRUNCATED_FIELD] = {
            "faces_found": found,
            "faces_left_out": found - len(faces),
            "output_limit_bytes": limit,
        }
    return output
