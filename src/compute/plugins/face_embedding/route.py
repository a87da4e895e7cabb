"""POST /jobs/face_embedding: multipart `file`, `normalize`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from compute.plugins import intake
from compute.plugins.media import DECODABLE_IMAGES


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/face_embedding")
    async def create_face_embedding_job(
        file: UploadFile = File(..., description="a cropped face (ArcFace-aligned 112x112 works best)"),
        normalize: bool = Form(True, description="L2-normalise the embedding"),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """A 512-d ArcFace embedding of a face crop (`output/face_embedding.npy`) and its sharpness."""
        async with intake.new_job(file_storage, file, DECODABLE_IMAGES) as job:
            params = {
                "input_path": job.relative,
                "output_path": "output/face_embedding.npy",
                "normalize": normalize,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "face_embedding", params, priority, user)

    return router
