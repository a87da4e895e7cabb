"""POST /jobs/image_resize: multipart `file`, `width`, `height`, `maintain_aspect_ratio`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from compute.plugins import intake
from compute.plugins.media import DECODABLE_IMAGES, ImageTooLarge, check_pixels


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/image_resize")
    async def create_image_resize_job(
        file: UploadFile = File(..., description="the image to resize"),
        width: int = Form(..., gt=0, description="target width in pixels"),
        height: int = Form(..., gt=0, description="target height in pixels"),
        # False by default, as in cl_ml_tools' image_resize, whose clients this route serves.
        maintain_aspect_ratio: bool = Form(
            False,
            description="true: fit inside width x height, keeping the shape; false: exactly width x height",
        ),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Resize an image; `task_output.output_path` names the result, in the upload's format."""
        # Refused before the upload is stored: an output this large would be a pixel bomb of our own.
        try:
            check_pixels(width, height, "requested output")
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        async with intake.new_job(file_storage, file, DECODABLE_IMAGES) as job:
            # The output's name comes from what the upload is, never from the name the client sent.
            params = {
                "input_path": job.relative,
                "output_path": f"output/resized.{job.kind.extension}",
                "width": width,
                "height": height,
                "maintain_aspect_ratio": maintain_aspect_ratio,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "image_resize", params, priority, user)

    return router
