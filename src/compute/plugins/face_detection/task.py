"""The face_detection task a worker runs."""

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

MODEL = models.MODELS["face_detection"]
OUTPUT_PATH = "output/face_detection.json"


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
        described = []
        for index, face in enumerate(faces):
            try:
                crop = align(image, face.landmarks)
            except AlignmentFailed as exc:
                raise AlignmentFailed(f"face {index}: {exc}") from None
            relative = crop_path(index)
            files.output(relative).write_bytes(encode_png(crop))
            described.append(describe(face, width, height, relative))
        output = {
            "faces": described,
            "num_faces": len(described),
            "image_width": width,
            "image_height": height,
        }
        files.output(params.output_path).write_text(json.dumps(output, indent=2))
        progress(100)
        return output
