"""GET/PATCH/DELETE /jobs/{id}, cancel, retry and file downloads, each for the caller's own jobs only.

A job the caller may not see (someone else's) answers exactly like a job that does not exist,
404, so ids do not leak. Database calls run off the event loop (RouteDatabase).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Response

from compute.db.repository import JobRecord, JobRepository
from compute.db.transitions import Changed
from compute.files.staging import OutputStaging
from compute.jobs import OPEN, JobStatus
from compute.server.access import JobScope
from compute.server.http.auth import CallerScope
from compute.server.http.deps import ActionsDep, CancellerDep, DbDep, RepoDep, StagingDep, StorageDep
from compute.server.http.opened_file import OpenedFileResponse
from compute.server.http.schemas import JobFile, JobFiles, JobPatch, JobPublic
from compute.storage import MAX_JOB_ID, BadPath, NotAJobFile, PathOutsideJob, valid_job_id

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: Download types by file extension from Python's own table, not the host's /etc/mime.types, so
#: a file has the same type on every machine; plus what our plugins write that it lacks.
_TYPES = mimetypes.MimeTypes(filenames=())
_TYPES.add_type("video/mp2t", ".ts")  # HLS segments
_TYPES.add_type("image/webp", ".webp")


def _not_found(job_id: str) -> HTTPException:
    if valid_job_id(job_id):
        return HTTPException(404, f"job {job_id} not found")
    return HTTPException(404, f"job {job_id[:MAX_JOB_ID]!r} not found")  # no such id can exist


def _visible(repo: JobRepository, job_id: str, scope: JobScope) -> JobRecord | None:
    """The job, when it exists and the caller may see it. Blocking."""
    if not valid_job_id(job_id):  # no job can have that id: no need to ask the database
        return None
    job = repo.get(job_id)
    return job if job is not None and scope.allows(job.created_by) else None


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, repo: RepoDep, db: DbDep, scope: CallerScope) -> JobPublic:
    """A job's status, progress and result."""
    job = await db.call(_visible, repo, job_id, scope)
    if job is None:
        raise _not_found(job_id)
    return JobPublic.of(job)


@router.patch("/{job_id}", response_model=JobPublic, responses={409: {"description": "not queued"}})
async def change_job(
    job_id: str, change: JobPatch, repo: RepoDep, db: DbDep, actions: ActionsDep, scope: CallerScope
) -> JobPublic:
    """Change a queued job's priority (0-10, higher runs first); 409 once a worker took it."""
    job = await db.call(
        _act,
        repo,
        job_id,
        scope,
        lambda: actions.reprioritise(job_id, change.priority),
        "only a queued job's priority can change",
    )
    return JobPublic.of(job)


@router.post("/{job_id}/retry", response_model=JobPublic, responses={409: {"description": "not failed"}})
async def retry_job(
    job_id: str, repo: RepoDep, db: DbDep, actions: ActionsDep, scope: CallerScope
) -> JobPublic:
    """Queue a failed or cancelled job again, as the same job: its attempts go on counting,
    `max_retries` grants the task's retries afresh, earlier attempts' errors are kept."""
    job = await db.call(
        _act,
        repo,
        job_id,
        scope,
        lambda: actions.retry(job_id),
        "only a failed or cancelled job can be retried",
    )
    return JobPublic.of(job)


def _act(
    repo: JobRepository, job_id: str, scope: JobScope, change: Callable[[], Changed | None], refusal: str
) -> JobRecord:
    """Apply `change` to a job the caller may see: the job after it, 404 or 409. Blocking."""
    if _visible(repo, job_id, scope) is None:
        raise _not_found(job_id)
    changed = change()
    job = repo.get(job_id) if changed is not None else None
    if changed is None or job is None:  # deleted meanwhile
        raise _not_found(job_id)
    if not changed.applied:
        raise HTTPException(409, f"job {job_id} is {changed.previous}: {refusal}")
    return job


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses={409: {"description": "already finished"}}
)
async def cancel_job(
    job_id: str, repo: RepoDep, db: DbDep, canceller: CancellerDep, scope: CallerScope
) -> JobPublic:
    """Cancel a queued or running job (a running job's worker is told to stop it); 409 for a job
    that already finished (it is left as it was)."""

    def cancel() -> JobRecord:
        if _visible(repo, job_id, scope) is None:
            raise _not_found(job_id)
        previous = canceller.cancel(job_id)
        job = repo.get(job_id) if previous is not None else None
        if previous is None or job is None:
            raise _not_found(job_id)
        if previous not in OPEN:
            raise HTTPException(
                409, f"job {job_id} is already {previous}: only a queued or running job can be cancelled"
            )
        return job

    return JobPublic.of(await db.call(cancel))


@router.delete("/{job_id}", status_code=204)
async def delete_job(
    job_id: str, repo: RepoDep, db: DbDep, storage: StorageDep, canceller: CancellerDep, scope: CallerScope
) -> Response:
    """Delete a job and its files; a running job is cancelled first."""

    def delete() -> bool:
        if _visible(repo, job_id, scope) is None:
            return False
        if canceller.cancel(job_id) is None or not repo.delete_job(job_id):
            return False
        storage.cleanup_job(job_id)
        return True

    if not await db.call(delete):
        raise _not_found(job_id)
    return Response(status_code=204)


@router.get("/{job_id}/files", response_model=JobFiles)
async def list_job_files(
    job_id: str, repo: RepoDep, db: DbDep, storage: StorageDep, staging: StagingDep, scope: CallerScope
) -> JobFiles:
    """Every file of the job's folder (its upload under `input/`, its results under `output/`)."""
    job = await db.call(_visible, repo, job_id, scope)
    if job is None:
        raise _not_found(job_id)
    await _promoted(staging, job)
    files = await asyncio.to_thread(storage.job_files, job_id)
    return JobFiles(job_id=job_id, files=[JobFile(path=path, size=size) for path, size in files])


@router.get("/{job_id}/files/{file_path:path}")
async def get_job_file(
    job_id: str,
    file_path: str,
    repo: RepoDep,
    db: DbDep,
    storage: StorageDep,
    staging: StagingDep,
    scope: CallerScope,
) -> OpenedFileResponse:
    """Download a file of the job's folder, e.g. `output/converted_photo.png`."""
    job = await db.call(_visible, repo, job_id, scope)
    if job is None:
        raise _not_found(job_id)
    await _promoted(staging, job)
    try:
        # Opened here, on the loop: a thread could be abandoned (client gone) holding the file.
        fd, name = storage.open_file(job_id, file_path)
    except PathOutsideJob:
        raise HTTPException(403, "path is outside the job's folder") from None
    except BadPath as exc:
        raise HTTPException(400, str(exc)) from None
    except NotAJobFile:
        raise HTTPException(404, f"file {_shown(file_path)} not found in job {job_id}") from None
    # Served from that descriptor: the path may lead elsewhere by the time the body is sent.
    return OpenedFileResponse(
        fd, media_type=media_type(name), filename=name, headers={"X-Content-Type-Options": "nosniff"}
    )


async def _promoted(staging: OutputStaging, job: JobRecord) -> None:
    """A completed job's outputs in its folder before they are listed or served: a remote
    worker's outputs wait in staging until the completion is persisted, and whoever saw
    `completed` (on `inference/events`, say) may ask before the server promoted them."""
    if job.status == JobStatus.COMPLETED.value and staging.storage.staging_dir(job.job_id).is_dir():
        await asyncio.to_thread(staging.promote, job.job_id, job.attempt)


def media_type(name: str) -> str:
    """The file's type by its extension; `application/octet-stream` when unknown or compressed
    (a `.tar.gz` is not an `application/x-tar` body)."""
    guessed, encoding = _TYPES.guess_type(name, strict=False)
    return guessed if guessed is not None and encoding is None else "application/octet-stream"


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "..."
