"""The `bench_noop` plugin: a ComputeModule that does nothing, and its route factory.

The task writes its own start time (time.time_ns) into task_output, so the benchmark can
measure pickup to the nanosecond clock, and can report `steps` progress updates, each
stamped with the moment it was reported.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from cl_ml_tools import BaseJobParams, ComputeModule, FileStorage, Job, JobRepository
from fastapi import APIRouter, Depends, Form
from pydantic import Field

TASK_TYPE = "bench_noop"


class BenchNoopParams(BaseJobParams):  # type: ignore[misc]  # untyped cl_ml_tools
    steps: int = Field(default=0, ge=0, le=10_000, description="progress updates to report")
    step_ms: float = Field(default=0.0, ge=0.0, le=10_000.0, description="sleep before each update")


class BenchNoopTask(ComputeModule):  # type: ignore[misc]
    @property
    def task_type(self) -> str:
        return TASK_TYPE

    def get_schema(self) -> type[BaseJobParams]:
        return BenchNoopParams

    async def execute(
        self, job: Job, params: BaseJobParams, progress_callback: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        started_ns = time.time_ns()
        assert isinstance(params, BenchNoopParams)
        reported: list[int] = []
        for i in range(1, params.steps + 1):
            if params.step_ms:
                await asyncio.sleep(params.step_ms / 1000)
            if progress_callback is not None:
                reported.append(time.time_ns())
                progress_callback(i * 100 // params.steps)
        return {
            "status": "ok",
            "task_output": {
                "started_ns": started_ns,
                "finished_ns": time.time_ns(),
                "pid": os.getpid(),
                "steps": params.steps,
                "progress_ns": reported,
            },
        }


def create_router(
    repository: JobRepository, file_storage: FileStorage, get_current_user: Callable[..., Any]
) -> APIRouter:
    """POST /jobs/bench_noop: optional form fields, no file."""
    router = APIRouter()

    @router.post("/jobs/bench_noop")
    async def create_bench_noop_job(
        steps: Annotated[int, Form(ge=0, le=10_000)] = 0,
        step_ms: Annotated[float, Form(ge=0.0, le=10_000.0)] = 0.0,
        priority: Annotated[int, Form(ge=0, le=10)] = 5,
        user: Any = Depends(get_current_user),
    ) -> dict[str, str]:
        job_id = str(uuid.uuid4())
        job = Job(job_id=job_id, task_type=TASK_TYPE, params={"steps": steps, "step_ms": step_ms})
        created_by = getattr(user, "id", None)
        repository.add_job(job, created_by=created_by, priority=priority)
        return {"job_id": job_id, "status": "queued"}

    return router
