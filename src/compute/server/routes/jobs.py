"""GET/DELETE /jobs/{id}, cancel and file downloads, each for the caller's own jobs only.

A job the caller may not see (someone else's) answers exactly like a job that does not exist,
404, so ids do not leak. Database calls run off the event loop (RouteDatabase).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse

from compute.db.repository import JobRecord, JobRepository
from compute.server.auth import CallerScope, JobScope
from compute.server.deps import CancellerDep, DbDep, RepoDep, StorageDep
from compute.server.schemas import JobFile, JobFiles, JobPublic
from compute.storage import MAX_JOB_ID, BadPath, PathOutsideJob, valid_job_id

router = APIRouter(prefix="/jobs", tags=["jobs"])


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


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: str, repo: RepoDep, db: DbDep, canceller: CancellerDep,
                     scope: CallerScope) -> JobPublic:
    """Cancel a queued or running job (a running job's worker is told to stop it)."""

    def cancel() -> JobRecord | None:
        if _visible(repo, job_id, scope) is None or canceller.cancel(job_id) is None:
            return None
        return repo.get(job_id)

    job = await db.call(cancel)
    if job is None:
        raise _not_found(job_id)
    return JobPublic.of(job)


@router.delete("/{job_id}", status_code=204)
async def delete_job(job_id: str, repo: RepoDep, db: DbDep, storage: StorageDep,
                     canceller: CancellerDep, scope: CallerScope) -> Response:
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
async def list_job_files(job_id: str, repo: RepoDep, db: DbDep, storage: StorageDep,
                         scope: CallerScope) -> JobFiles:
    """Every file of the job's folder (its upload under `input/`, its results under `output/`)."""
    if await db.call(_visible, repo, job_id, scope) is None:
        raise _not_found(job_id)
    files = await asyncio.to_thread(storage.job_files, job_id)
    return JobFiles(job_id=job_id, files=[JobFile(path=path, size=size) for path, size in files])


@router.get("/{job_id}/files/{file_path:path}")
async def get_job_file(job_id: str, file_path: str, repo: RepoDep, db: DbDep, storage: StorageDep,
                       scope: CallerScope) -> FileResponse:
    """Download a file of the job's folder, e.g. `output/converted_photo.png`."""
    if await db.call(_visible, repo, job_id, scope) is None:
        raise _not_found(job_id)
    try:
        path = storage.resolve(job_id, file_path)
    except PathOutsideJob:
        raise HTTPException(403, "path is outside the job's folder") from None
    except BadPath as exc:
        raise HTTPException(400, str(exc)) from None
    if not storage.is_file(path):
        raise HTTPException(404, f"file {_shown(file_path)} not found in job {job_id}")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "..."
