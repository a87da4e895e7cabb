"""POST /jobs/face_detection: multipart `file`, `confidence_threshold`, `nms_threshold`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from compute.plugins import intake
from compute.plugins.face_detection.task import OUTPUT_PATH
from compute.plugins.media import DECODABLE_IMAGES


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/face_detection")
    async def create_face_detection_job(
        file: UploadFile = File(..., description="the image to find faces in"),
        confidence_threshold: float = Form(0.7, ge=0.0, le=1.0, description="lowest face score kept"),
        nms_threshold: float = Form(
            0.4, ge=0.0, le=1.0, description="overlap (IoU) above which the weaker of two faces goes"
        ),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Find faces: boxes, 5 landmarks and aligned 112x112 crops at `faces/face_<i>.png`."""
        async with intake.new_job(file_storage, file, DECODABLE_IMAGES) as job:
            params = {
                "input_path": job.relative,
                "output_path": OUTPUT_PATH,
                "confidence_threshold": confidence_threshold,
                "nms_threshold": nms_threshold,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "face_detection", params, priority, user)

    return router
