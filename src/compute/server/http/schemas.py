"""Response models of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compute.db.repository import JobRecord
from compute.jobs import JobStatus, sdk_status

#: Job priorities, as every plugin route's `priority` form field takes them.
MIN_PRIORITY, MAX_PRIORITY = 0, 10


class JobPublic(BaseModel):
    job_id: str
    task_type: str
    #: CL Server's statuses: a cancelled job reads `failed` (see `cancelled`).
    status: str
    #: True when the job was cancelled (its `status` is then `failed`).
    cancelled: bool
    progress: int
    priority: int
    params: dict[str, Any]
    task_output: dict[str, Any] | None
    error_message: str | None
    created_by: str | None
    worker_id: str | None
    #: Milliseconds since the epoch.
    created_at: int
    updated_at: int | None
    started_at: int | None
    completed_at: int | None

    @classmethod
    def of(cls, job: JobRecord) -> JobPublic:
        return cls(
            job_id=job.job_id,
            task_type=job.task_type,
            status=sdk_status(job.status),
            cancelled=job.status == JobStatus.CANCELLED.value,
            progress=job.progress,
            priority=job.priority,
            params=job.params,
            task_output=job.task_output,
            error_message=job.error_message,
            created_by=job.created_by,
            worker_id=job.worker_id,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
        )


class JobPatch(BaseModel):
    """PATCH /jobs/{id}: what to change on a queued job."""

    model_config = ConfigDict(extra="forbid")

    #: Higher runs first, 0-10 as on submit.
    priority: int = Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)


class JobFile(BaseModel):
    #: Relative to the job folder, as GET /jobs/{id}/files/{path} takes it.
    path: str
    size: int


class JobFiles(BaseModel):
    job_id: str
    files: list[JobFile]


class JobListItem(JobPublic):
    """A job in a listing: as GET /jobs/{id} returns it, `task_output` only when asked for
    (`include=task_output`): a plugin's result may be up to MAX_RESULT_BYTES, a page 200 jobs."""

    task_output: dict[str, Any] | None = Field(None, description="only with include=task_output")

    @classmethod
    def listed(cls, job: JobRecord, with_output: bool) -> JobListItem:
        fields = JobPublic.of(job).model_dump()
        if not with_output:
            del fields["task_output"]  # left unset, so the reply leaves it out
        return cls(**fields)


class JobList(BaseModel):
    """A page of GET /jobs."""

    jobs: list[JobListItem]
    #: Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class WorkerPublic(BaseModel):
    """A worker run the database vouches for (GET /workers)."""

    worker_id: str
    #: The run's public session id (never its secret).
    session: str
    #: "idle" or "busy", as the worker last announced.
    state: str
    tasks: list[str]
    #: Jobs this run is processing now (only those the caller may see).
    running_jobs: list[str]
    hostname: str | None
    pid: int | None
    version: str | None
    #: Milliseconds since the epoch: when the run started, its last heartbeat in the database,
    #: and its last verified announcement on the bus.
    started_at: int
    last_heartbeat: int
    last_announced: int


class WorkerList(BaseModel):
    workers: list[WorkerPublic]


class QueueDepth(BaseModel):
    """One task type's queue (GET /queues): only task types with open jobs are listed."""

    task_type: str
    queued: int
    running: int
    #: How long the oldest queued job has waited (ms); null when none waits.
    oldest_queued_age_ms: int | None


class JobCreated(BaseModel):
    job_id: str
    status: str
    task_type: str


class Capabilities(BaseModel):
    num_workers: int
    capabilities: dict[str, int]


class StorageSize(BaseModel):
    total_size: int
    job_count: int


class CleanupResult(BaseModel):
    deleted_count: int
    freed_space: int


class Health(BaseModel):
    status: str
    service: str
    version: str
    mqtt_connected: bool
    #: "ok", or "unavailable" while the database is locked or unreachable (writes then get 503).
    database: str
    #: Why the database is unavailable (None when it is ok).
    database_detail: str | None = None
    #: Whether job routes want a bearer token (CL Server's SDK reads it).
    auth_required: bool
    #: "on" when requests without a token may use the job routes.
    guestMode: str  # CL Server's field name
    #: Which server of the deployment answered (COMPUTE_SERVER_ID).
    server_id: str
    #: Whether this server runs the periodic sweeps now (one server of a deployment does).
    sweeps: bool


class GuestModeState(BaseModel):
    guest_mode: bool


class StagedOutputs(BaseModel):
    """A remote worker's outputs, received whole and checked, waiting for the job's completion."""

    staged: int
    bytes: int


class MissingOutputs(BaseModel):
    """Which of a remote worker's outputs the server does not hold yet (a resumed upload)."""

    missing: list[str]
    #: Largest request body the server takes (MAX_UPLOAD_BYTES): send the files in requests of that size.
    max_request_bytes: int
