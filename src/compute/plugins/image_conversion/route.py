"""POST /jobs/image_conversion: multipart `file`, `format`, `quality`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from compute.plugins import intake
from compute.plugins.image_conversion.algorithm import extension
from compute.plugins.image_conversion.task import Format
from compute.plugins.media import DECODABLE_IMAGES


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/image_conversion")
    async def create_image_conversion_job(
        file: UploadFile = File(..., description="the image to convert"),
        format: Format = Form(..., description="target format"),
        quality: int = Form(85, ge=1, le=100, description="JPEG/WebP quality"),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Convert an image to another format; `params.output_path` names the result."""
        async with intake.new_job(file_storage, file, DECODABLE_IMAGES) as job:
            params = {
                "input_path": job.relative,
                "output_path": f"output/converted.{extension(format)}",
                "format": format,
                "quality": quality,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "image_conversion", params, priority, user)

    return router
