"""`test_batch`: a plugin that takes batches, for the tests of jobs handed to a plugin together
(tests/integration/test_plugin_batches.py).

Each job of a call reports progress 1, then the call blocks its thread for the longest `hold_s`
of its jobs (a batch is one model run: a job that holds it holds its batch-mates), and until the
file any of its jobs names in `until_file` exists (a gate the test opens), then each job
does what its params ask on its own: allocate `allocate_mb` MB (a MemoryError is that job's),
fail as its own fault (`outcome="error"`) or crash (`outcome="crash"`). It returns the pid of the
process that ran it, the size of the call it came in and its place there, and its `tag`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from cl_ml_tools import BaseJobParams, ComputeModule, Job
from pydantic import Field

TASK_TYPE = "test_batch"

Report = Callable[[int], None]


class BatchParams(BaseJobParams):  # type: ignore[misc]  # untyped cl_ml_tools
    outcome: Literal["ok", "error", "crash"] = "ok"
    hold_s: float = Field(default=0.0, ge=0.0, description="seconds the call blocks in time.sleep")
    allocate_mb: int = Field(default=0, ge=0, description="MB allocated and touched")
    tag: str = ""
    until_file: str = Field(default="", description="the call blocks until this file exists")


class JobCrashed(RuntimeError):
    """What a job with outcome="crash" raises."""


class BatchTask(ComputeModule):  # type: ignore[misc]
    @property
    def task_type(self) -> str:
        return TASK_TYPE

    def get_schema(self) -> type[BaseJobParams]:
        return BatchParams

    def batchable(self) -> bool:
        return True

    async def execute(
        self, job: Job, params: BaseJobParams, progress_callback: Report | None = None
    ) -> dict[str, Any]:
        (result,) = await self.execute_batch([(job, params, progress_callback or (lambda _p: None))])
        if isinstance(result, BaseException):
            raise result
        return result

    async def execute_batch(
        self, jobs: Sequence[tuple[Job, BaseJobParams, Report]]
    ) -> list[dict[str, Any] | BaseException]:
        for _, _, report in jobs:
            report(1)
        hold = max(params.hold_s for _, params, _ in jobs)
        if hold:
            # Blocks the event loop on purpose: cancelling the coroutine cannot stop it.
            time.sleep(hold)  # noqa: ASYNC251
        for gate in {params.until_file for _, params, _ in jobs if params.until_file}:
            while not os.path.exists(gate):  # noqa: ASYNC240  # blocks on purpose, as hold_s
                time.sleep(0.01)  # noqa: ASYNC251
        return [self._one(index, len(jobs), params) for index, (_, params, _) in enumerate(jobs)]

    def _one(self, index: int, size: int, params: BatchParams) -> dict[str, Any] | BaseException:
        try:
            if params.allocate_mb:
                block = bytearray(params.allocate_mb * 1024 * 1024)
                del block
            if params.outcome == "error":
                return {"status": "error", "error": f"job {params.tag} is bad"}
            if params.outcome == "crash":
                raise JobCrashed(f"job {params.tag} crashed")
        except Exception as exc:
            return exc
        output = {"pid": os.getpid(), "batch": size, "index": index, "tag": params.tag}
        return {"status": "ok", "task_output": output}
