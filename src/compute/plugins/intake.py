"""What every plugin route does with a request: take the upload, check it, add the job.

The upload is stored under a generated name (`input/upload.<ext>`, the extension from what
the bytes are, not from the name); the name the client sent is kept as data in
`params["original_filename"]`. A file the task cannot take is refused here with 415 and a
reason, instead of becoming a job that fails later; an image over the pixel limit gets 413, and
so does a video past the video limits for a task that decodes its frames (one ffprobe cannot
read gets 422).
Whatever goes wrong, the job folder is removed again, so no folder is left without a row.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_ml_tools import Job
from fastapi import HTTPException, UploadFile

from compute.plugins import video_probe
from compute.plugins.media import ImageTooLarge, MediaKind, NotAnImage, check_pixels, image_size, sniff
from compute.storage import JobStorage

MAX_NAME_CHARS = 255
STORED_STEM = "upload"


@dataclass(frozen=True)
class NewJob:
    job_id: str
    #: The stored upload, absolute (for checks in the route; params get `relative`).
    path: Path
    #: `input/upload.<ext>`, relative to the job folder, as `params["input_path"]`.
    relative: str
    kind: MediaKind
    original_name: str


def check_name(name: str | None) -> str:
    """The client's file name, kept as data: refuse NUL and absurd lengths with 400."""
    name = name or ""
    if "\x00" in name:
        raise HTTPException(400, "the upload's file name contains a NUL character")
    if len(name) > MAX_NAME_CHARS:
        raise HTTPException(400, f"the upload's file name is longer than {MAX_NAME_CHARS} characters")
    return name


@contextlib.asynccontextmanager
async def job_folder(storage: JobStorage) -> AsyncIterator[str]:
    """A new job id with its folder; the folder goes away if the block fails."""
    job_id = str(uuid.uuid4())
    storage.create_job_directory(job_id)
    try:
        yield job_id
    except BaseException:
        storage.cleanup_job(job_id)
        raise


@contextlib.asynccontextmanager
async def new_job(
    storage: JobStorage, file: UploadFile, accepts: Collection[MediaKind], *, decodes_video: bool = False
) -> AsyncIterator[NewJob]:
    """Store `file` in a new job folder and check it; the folder goes away if anything fails.

    `decodes_video`: the task decodes a video's frames, so a video must be within the video
    limits (413) and readable by ffprobe (422). Tasks that read a video's bytes or metadata only
    (hash, exif) take any video."""
    original = check_name(file.filename)
    async with job_folder(storage) as job_id:
        info = await storage.save_input_file(job_id, STORED_STEM, file)
        job = _checked(Path(info["path"]), job_id, original, accepts)
        if decodes_video and job.kind.family == "video":
            await _check_video(job)
        yield job


#: Seconds ffprobe gets at intake; a file it cannot read in that time is refused.
PROBE_SECONDS = 10.0


async def _check_video(job: NewJob) -> None:
    """The stored video within the limits and readable, probed through a descriptor of it."""
    fd = os.open(job.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await check_video(video_probe.Source(fd, job.relative))
    finally:
        os.close(fd)


async def check_video(source: video_probe.Source) -> None:
    """413 for a video past the video limits, 422 for one ffprobe cannot read or without a
    video stream (for a task that decodes its frames)."""
    try:
        await video_probe.probe(source, timeout=PROBE_SECONDS)
    except video_probe.VideoTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except video_probe.VideoUnreadable as exc:
        raise HTTPException(422, f"the video cannot be read: {exc}") from None
    except video_probe.NoVideoStream:
        raise HTTPException(422, "the file has no video stream") from None


def _checked(stored: Path, job_id: str, original: str, accepts: Collection[MediaKind]) -> NewJob:
    kind = sniff(stored)
    if kind is None or kind not in accepts:
        what = "an unrecognised format" if kind is None else kind.mime
        takes = ", ".join(sorted({k.mime for k in accepts}))
        raise HTTPException(415, f"the upload is {what}; this task takes {takes}")
    if kind.family == "image" and kind.extension != "heic":
        try:
            check_pixels(*image_size(stored))
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except NotAnImage as exc:
            raise HTTPException(415, str(exc)) from None
    final = stored.with_name(f"{STORED_STEM}.{kind.extension}")
    stored.rename(final)
    return NewJob(job_id, final, f"input/{final.name}", kind, original)


def add_job(
    repository: Any, job_id: str, task_type: str, params: dict[str, Any], priority: int, user: Any
) -> dict[str, str]:
    """Hand the job to the route's repository (`add_job`, cl_ml_tools' protocol); the reply CL
    Server clients read.

    In compute-server that repository records the job for the request: the route wrapper
    commits it once the endpoint returned, then the workers are woken, and the reply goes out
    only after the commit (server/http/plugin_routes.py).
    """
    created_by = getattr(user, "id", None) if user is not None else None
    repository.add_job(
        Job(job_id=job_id, task_type=task_type, params=params), created_by=created_by, priority=priority
    )
    return {"job_id": job_id, "status": "queued", "task_type": task_type}
