"""Jobs for a test's server: stored directly (no upload), put in a state, or submitted to a task
plugin's route as CL Server's SDK does and followed to the end."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from cl_ml_tools import Job
from sqlalchemy import update

from compute.db.repository import JobRecord, JobRepository
from compute.db.tables import jobs_table
from tests.support.inprocess import Server


def add_job(server: Server, task: str, *, by: str | None = None, priority: int = 5) -> str:
    """A job stored and hinted as a plugin route would, without an upload (params empty)."""
    job_id = str(uuid.uuid4())
    server.services.submitter.add_job(
        Job(job_id=job_id, task_type=task, params={}), created_by=by, priority=priority
    )
    return job_id


def stored(repo: JobRepository, job_id: str) -> JobRecord:
    """A job's row as the repository reads it (the test fails when there is none)."""
    record = repo.get(job_id)
    assert record is not None, f"job {job_id} is not in the database"
    return record


def set_columns(server: Server, job_id: str, **values: Any) -> None:
    """Put a job in a state directly (finished, claimed by a named worker ...)."""
    with server.services.repo.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job_id).values(**values))


async def post_job(
    server: Server,
    task: str,
    content: bytes | None,
    data: dict[str, str] | None = None,
    filename: str = "x.jpg",
) -> tuple[int, str]:
    """POST /jobs/<task> as the SDK does (multipart `file`, string fields); (status, body text)."""
    files = None if content is None else {"file": (filename, content, "application/octet-stream")}
    response = await server.client.post(f"/jobs/{task}", data={"priority": "5", **(data or {})}, files=files)
    return response.status_code, response.text


async def run_job(
    server: Server,
    task: str,
    content: bytes,
    filename: str = "upload.bin",
    data: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Submit as CL Server's SDK does (multipart `file` + string form fields), wait, return the job."""
    response = await server.client.post(
        f"/jobs/{task}",
        data={"priority": "5", **(data or {})},
        files={"file": (filename, content, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert set(created) == {"job_id", "status", "task_type"} and created["task_type"] == task
    job = await server.wait_status(created["job_id"], "completed", timeout=timeout)
    return job


async def download(server: Server, job_id: str, path: str) -> bytes:
    response: httpx.Response = await server.client.get(f"/jobs/{job_id}/files/{path}")
    assert response.status_code == 200, (path, response.text)
    return response.content


def jobs_left(server: Server) -> list[str]:
    """Job folders on disk: a refused request must leave none."""
    folder = server.settings.storage_dir / "jobs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
