"""POST /jobs/hash: multipart `file`, `algorithm` (sha512 | md5), `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from compute.plugins import intake
from compute.plugins.hash.task import Algorithm
from compute.plugins.media import WITH_METADATA


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/hash")
    async def create_hash_job(
        file: UploadFile = File(..., description="the image or video to hash"),
        algorithm: Algorithm = Form(
            "sha512", description="digest of the file's bytes in `hash_value` (sha512 is always given too)"
        ),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Hash a file: digests of its bytes and, for images, perceptual hashes in `task_output`."""
        async with intake.new_job(file_storage, file, WITH_METADATA) as job:
            params = {
                "input_path": job.relative,
                "output_path": "output/hash.json",
                "algorithm": algorithm,
                "original_filename": job.original_name,
            }
            return intake.add_job(repository, job.job_id, "hash", params, priority, user)

    return router
