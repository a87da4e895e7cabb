"""GET/DELETE /jobs/{id} and file downloads."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse

from compute.server.auth import JobUser
from compute.server.deps import CancellerDep, RepoDep, StorageDep
from compute.server.schemas import JobPublic
from compute.storage import PathOutsideJob

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, repo: RepoDep, _user: JobUser) -> JobPublic:
    """A job's status, progress and result."""
    job = repo.get(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return JobPublic.of(job)


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: str, repo: RepoDep, canceller: CancellerDep, _user: JobUser) -> JobPublic:
    """Cancel a queued or running job (a running job's worker is told to stop it)."""
    if canceller.cancel(job_id) is None:
        raise HTTPException(404, f"job {job_id} not found")
    job = repo.get(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return JobPublic.of(job)


@router.delete("/{job_id}", status_code=204)
async def delete_job(job_id: str, repo: RepoDep, storage: StorageDep, canceller: CancellerDep,
               _user: JobUser) -> Response:
    """Delete a job and its files; a running job is cancelled first."""
    if canceller.cancel(job_id) is None or not repo.delete_job(job_id):
        raise HTTPException(404, f"job {job_id} not found")
    storage.cleanup_job(job_id)
    return Response(status_code=204)


@router.get("/{job_id}/files/{file_path:path}")
def get_job_file(job_id: str, file_path: str, repo: RepoDep, storage: StorageDep,
                 _user: JobUser) -> FileResponse:
    """Download a file of the job's folder, e.g. `output/converted_photo.png`."""
    if repo.get(job_id) is None:
        raise HTTPException(404, f"job {job_id} not found")
    try:
        path = storage.resolve(job_id, file_path)
    except PathOutsideJob:
        raise HTTPException(403, "path is outside the job's folder") from None
    if not path.is_file():
        raise HTTPException(404, f"file {file_path} not found in job {job_id}")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)
