"""Admin routes: storage size, cleanup of old finished jobs and orphan folders, guest mode."""

from __future__ import annotations

from fastapi import APIRouter, Form, Query, Request

from compute.jobs import now_ms
from compute.server.access import GuestMode
from compute.server.http.auth import AdminUser
from compute.server.http.deps import DbDep, OrphansDep, RepoDep, StorageDep, services_of
from compute.server.http.schemas import CleanupResult, GuestModeState, StorageSize

router = APIRouter(prefix="/admin/jobs", tags=["admin"])
prefs = APIRouter(prefix="/admin", tags=["admin"])
DAY_MS = 24 * 3600 * 1000
#: Longest cleanup age a client may ask for (a century): larger values cannot be a date.
MAX_DAYS = 36_500


@router.get("/storage/size", response_model=StorageSize)
def storage_size(storage: StorageDep, _admin: AdminUser) -> StorageSize:
    """Bytes used by job folders, and how many there are."""
    count = sum(1 for p in storage.jobs_root.iterdir() if p.is_dir()) if storage.jobs_root.exists() else 0
    return StorageSize(total_size=storage.size_bytes(), job_count=count)


@router.delete("/cleanup", response_model=CleanupResult)
async def cleanup(
    repo: RepoDep,
    storage: StorageDep,
    db: DbDep,
    orphans: OrphansDep,
    _admin: AdminUser,
    days: int = Query(7, ge=0, le=MAX_DAYS, description="delete finished jobs older than this"),
) -> CleanupResult:
    """Delete jobs that finished more than `days` days ago, with their files, and job folders
    left without a job (older than ORPHAN_GRACE_SECONDS)."""

    def clean() -> CleanupResult:
        job_ids = repo.finished_before(now_ms() - days * DAY_MS)
        before = storage.size_bytes()
        repo.delete_many(job_ids)
        for job_id in job_ids:
            storage.cleanup_job(job_id)
        orphans.remove_orphans()
        return CleanupResult(deleted_count=len(job_ids), freed_space=max(0, before - storage.size_bytes()))

    return await db.call(clean)


def _guest(request: Request) -> GuestMode:
    return services_of(request).guest


@prefs.get("/pref/guest-mode", response_model=GuestModeState)
def get_guest_mode(request: Request, _admin: AdminUser) -> GuestModeState:
    """Whether requests without a token may use the job routes."""
    return GuestModeState(guest_mode=_guest(request).enabled)


@prefs.put("/pref/guest-mode", response_model=GuestModeState)
@prefs.put(
    "/config/guest-mode",
    response_model=GuestModeState,
    deprecated=True,
    summary="Set guest mode (the older CL Server path)",
)
def set_guest_mode(
    request: Request, admin: AdminUser, guest_mode: bool = Form(..., description="true or false")
) -> GuestModeState:
    """Turn guest mode on or off; kept in the database. Off ends guests' open live views."""
    _guest(request).set(guest_mode, by=admin.id if admin is not None else None)
    if not guest_mode:
        services_of(request).changes.end_guests()
    return GuestModeState(guest_mode=guest_mode)
