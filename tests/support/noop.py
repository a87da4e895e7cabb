"""`test_noop`: a task plugin for tests only, registered in-process by tests.support.launch.

It sleeps `step_ms` before each of `steps` progress updates and returns the pid of the
worker process that ran it, so a test can tell which worker finished a job.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from cl_ml_tools import BaseJobParams, ComputeModule, FileStorage, Job, JobRepository
from fastapi import APIRouter, Depends, Form
from pydantic import Field

TASK_TYPE = "test_noop"


class NoopParams(BaseJobParams):  # type: ignore[misc]  # untyped cl_ml_tools
    steps: int = Field(default=0, ge=0, le=10_000, description="progress updates to report")
    step_ms: float = Field(default=0.0, ge=0.0, le=10_000.0, description="sleep before each update")


class NoopTask(ComputeModule):  # type: ignore[misc]
    @property
    def task_type(self) -> str:
        return TASK_TYPE

    def get_schema(self) -> type[BaseJobParams]:
        return NoopParams

    async def execute(self, job: Job, params: BaseJobParams,
                      progress_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
        assert isinstance(params, NoopParams)
        for i in range(1, params.steps + 1):
            if params.step_ms:
                await asyncio.sleep(params.step_ms / 1000)
            if progress_callback is not None:
                progress_callback(i * 100 // params.steps)
        return {"status": "ok", "task_output": {"pid": os.getpid(), "steps": params.steps}}


def create_router(repository: JobRepository, file_storage: FileStorage,
                  get_current_user: Callable[..., Any]) -> APIRouter:
    """POST /jobs/test_noop: optional form fields, no file."""
    router = APIRouter()

    @router.post(f"/jobs/{TASK_TYPE}")
    async def create_test_noop_job(
        steps: Annotated[int, Form(ge=0, le=10_000)] = 0,
        step_ms: Annotated[float, Form(ge=0.0, le=10_000.0)] = 0.0,
        priority: Annotated[int, Form(ge=0, le=10)] = 5,
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        job_id = str(uuid.uuid4())
        job = Job(job_id=job_id, task_type=TASK_TYPE, params={"steps": steps, "step_ms": step_ms})
        repository.add_job(job, created_by=getattr(user, "id", None), priority=priority)
        return {"job_id": job_id, "status": "queued"}

    return router
