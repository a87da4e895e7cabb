"""POST /jobs/media_thumbnail: multipart `file`, `width`, `height`, `maintain_aspect_ratio`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from compute.plugins import intake
from compute.plugins.media import DECODABLE_IMAGES, VIDEOS, ImageTooLarge, check_pixels
from compute.plugins.media_thumbnail.algorithm import DEFAULT_SIZE

OUTPUT_PATH = "output/thumbnail.jpg"


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/media_thumbnail")
    async def create_media_thumbnail_job(
        file: UploadFile = File(..., description="the image or video"),
        width: int = Form(DEFAULT_SIZE, gt=0, description="box width in pixels"),
        height: int = Form(DEFAULT_SIZE, gt=0, description="box height in pixels"),
        maintain_aspect_ratio: bool = Form(True, description="fit inside the box (true) or fill it exactly"),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """A thumbnail of an image, or a sheet of a video's keyframes; `task_output.thumbnail_path`."""
        try:
            check_pixels(width, height, "thumbnail")
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        async with intake.new_job(file_storage, file, DECODABLE_IMAGES | VIDEOS, decodes_video=True) as job:
            params = {
                "input_path": job.relative,
                "output_path": OUTPUT_PATH,
                "width": width,
                "height": height,
                "maintain_aspect_ratio": maintain_aspect_ratio,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "media_thumbnail", params, priority, user)

    return router
