"""POST /jobs/hls_streaming: multipart `file` or `input_absolute_path` (+ `output_absolute_path`),
`include_original`, `variants` (JSON), `priority`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from compute.plugins import intake
from compute.plugins.hls_streaming.ladder import BadVariants, parse_variants
from compute.plugins.hls_streaming.task import OUTPUT_FOLDER
from compute.plugins.media import VIDEOS, sniff


def _source(raw: str) -> Path:
    """A video the client names on this machine: inside the media roots (403), there (404), a video (415)."""
    path = intake.media_path(raw, must_exist=True)
    try:
        kind = sniff(path)
    except OSError:
        raise HTTPException(403, "input_absolute_path cannot be read") from None
    if kind not in VIDEOS:
        what = "an unrecognised format" if kind is None else kind.mime
        raise HTTPException(
            415, f"input_absolute_path is {what}; this task takes {', '.join(sorted(k.mime for k in VIDEOS))}"
        )
    return path


def _folder(raw: str) -> Path:
    """A folder the client names for the output: inside the media roots (403), not a file (400)."""
    path = intake.media_path(raw, must_exist=False)
    if path.exists() and not path.is_dir():
        raise HTTPException(400, "output_absolute_path is a file, not a folder")
    return path


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/hls_streaming")
    async def create_hls_streaming_job(
        file: UploadFile | None = File(None, description="the video (or give input_absolute_path)"),
        input_absolute_path: str | None = Form(None, description="a video inside COMPUTE_MEDIA_ROOTS"),
        output_absolute_path: str | None = Form(None, description="output folder inside COMPUTE_MEDIA_ROOTS"),
        include_original: bool = Form(True, description="also the original, copied: adaptive-orig.m3u8"),
        variants: str | None = Form(None, description='JSON, e.g. [{"resolution": 720, "bitrate": 3500}]'),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Adaptive HLS of a video; `task_output.master_playlist` names the master playlist."""
        try:
            ladder = parse_variants(variants)
        except BadVariants as exc:
            raise HTTPException(422, str(exc)) from None
        if (file is None) == (not input_absolute_path):
            raise HTTPException(
                400, "send the video either as `file` or as `input_absolute_path`, exactly one of them"
            )
        params: dict[str, Any] = {
            "variants": [v.as_dict() for v in ladder],
            "include_original": include_original,
            "output_path": OUTPUT_FOLDER,
        }
        if output_absolute_path:
            params |= {"output_absolute_path": str(_folder(output_absolute_path)), "output_path": ""}
        if file is not None:
            async with intake.new_job(file_storage, file, VIDEOS) as job:
                params |= {"input_path": job.relative, "original_filename": job.original_name}
                return intake.add_job(repository, job.job_id, "hls_streaming", params, priority, user)
        assert input_absolute_path
        params["input_absolute_path"] = str(_source(input_absolute_path))
        async with intake.job_folder(file_storage) as job_id:
            return intake.add_job(repository, job_id, "hls_streaming", params, priority, user)

    return router
