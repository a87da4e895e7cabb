"""POST /jobs/hls_streaming: multipart `file` or `input_absolute_path` (+ `output_absolute_path`),
`include_original`, `variants` (JSON), `preset`, `priority`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from compute.plugins import intake, media_paths
from compute.plugins.hls_streaming.algorithm import X264_PRESET, X264_PRESETS
from compute.plugins.hls_streaming.ladder import BadVariants, parse_variants
from compute.plugins.hls_streaming.task import OUTPUT_FOLDER
from compute.plugins.media import VIDEOS, sniff_fd
from compute.plugins.video_probe import Source


async def _source(raw: str) -> str:
    """A video the client names on this machine: inside the media roots (403), there (404), a
    video (415) within the video limits (413) that ffprobe reads (422). The worker opens and
    checks it again: this is for the client's sake, early."""
    try:
        with media_paths.open_file(raw, "input_absolute_path") as found:
            kind = sniff_fd(found.fd)
            if kind not in VIDEOS:
                what = "an unrecognised format" if kind is None else kind.mime
                takes = ", ".join(sorted(k.mime for k in VIDEOS))
                raise HTTPException(415, f"input_absolute_path is {what}; this task takes {takes}")
            await intake.check_video(Source(found.fd, "input_absolute_path"))
            return str(found.path)
    except media_paths.MediaPathError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except OSError:
        raise HTTPException(403, "input_absolute_path cannot be read") from None


def _folder(raw: str) -> str:
    """A folder the client names for the output: inside the media roots (403), not a file (400)."""
    try:
        return str(media_paths.check_folder(raw, "output_absolute_path"))
    except media_paths.MediaPathError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def create_router(repository: Any, file_storage: Any, get_current_user: Callable[..., Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/jobs/hls_streaming")
    async def create_hls_streaming_job(
        file: UploadFile | None = File(None, description="the video (or give input_absolute_path)"),
        input_absolute_path: str | None = Form(None, description="a video inside COMPUTE_MEDIA_ROOTS"),
        output_absolute_path: str | None = Form(None, description="output folder inside COMPUTE_MEDIA_ROOTS"),
        include_original: bool = Form(True, description="also the original, copied: adaptive-orig.m3u8"),
        variants: str | None = Form(None, description='JSON, e.g. [{"resolution": 720, "bitrate": 3500}]'),
        preset: str = Form(
            X264_PRESET, description=f"x264 preset, one of {', '.join(X264_PRESETS)}: faster, lower quality"
        ),
        priority: int = Form(5, ge=0, le=10, description="higher runs first"),
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        """Adaptive HLS of a video; `task_output.master_playlist` names the master playlist."""
        try:
            ladder = parse_variants(variants)
        except BadVariants as exc:
            raise HTTPException(422, str(exc)) from None
        if preset not in X264_PRESETS:
            raise HTTPException(422, f"preset must be one of {', '.join(X264_PRESETS)}")
        if (file is None) == (not input_absolute_path):
            raise HTTPException(
                400, "send the video either as `file` or as `input_absolute_path`, exactly one of them"
            )
        params: dict[str, Any] = {
            "variants": [v.as_dict() for v in ladder],
            "include_original": include_original,
            "output_path": OUTPUT_FOLDER,
        }
        if preset != X264_PRESET:  # the default stays out: params as CL Server's SDK knows them
            params["preset"] = preset
        if output_absolute_path:
            params |= {"output_absolute_path": _folder(output_absolute_path), "output_path": ""}
        if file is not None:
            async with intake.new_job(file_storage, file, VIDEOS, decodes_video=True) as job:
                params |= {"input_path": job.relative, "original_filename": job.original_name}
                return intake.add_job(repository, job.job_id, "hls_streaming", params, priority, user)
        assert input_absolute_path
        params["input_absolute_path"] = await _source(input_absolute_path)
        async with intake.job_folder(file_storage) as job_id:
            return intake.add_job(repository, job_id, "hls_streaming", params, priority, user)

    return router
