"""POST /jobs/exif: multipart `file`, `tags` (comma-separated ExifTool names, empty: all), `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from compute.plugins import intake
from compute.plugins.exif.algorithm import bad_tag_names
from compute.plugins.media import WITH_METADATA

#: More names than any metadata block holds is a mistake or an attack, not a request.
MAX_TAGS = 200


def parse_tags(raw: str) -> list[str]:
    """`"Make, Model,,GPSLatitude"` -> `["Make", "Model", "GPSLatitude"]`; 422 for impossible names."""
    tags = [t.strip() for t in raw.split(",") if t.strip()]
    if len(tags) > MAX_TAGS:
        raise HTTPException(422, f"at most {MAX_TAGS} tags may be asked for")
    bad = bad_tag_names(tags)
    if bad:
        raise HTTPException(422, f"not ExifTool tag names (letters, digits, _ and -): {', '.join(bad[:5])}")
    return tags


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/exif")
    async def create_exif_job(
        file: UploadFile = File(..., description="the image or video to read metadata from"),
        tags: str = Form(
            "", description="comma-separated ExifTool tag names, e.g. Make,Model; empty: all tags"
        ),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Read a file's metadata; `task_output` holds the tags by ExifTool name and typed summary fields."""
        wanted = parse_tags(tags)  # before the upload is stored: a refused request leaves nothing
        async with intake.new_job(file_storage, file, WITH_METADATA) as job:
            params = {
                "input_path": job.relative,
                "output_path": "output/exif.json",
                "tags": wanted,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "exif", params, priority, user)

    return router
