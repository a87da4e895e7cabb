"""`test_stall`: a task plugin for the plugin-isolation tests (tests/integration/test_isolation.py).

Each run reports progress 1 as soon as it starts, then, as its params ask: blocks its thread in
a C call that no cancellation reaches (`hold_s`), allocates `allocate_mb` MB, and returns the
pid of the process that ran it with how many times this process "loaded its model" (a module
global, as the ONNX sessions in compute.plugins.models are).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cl_ml_tools import BaseJobParams, ComputeModule, Job
from pydantic import Field

TASK_TYPE = "test_stall"

#: Times this process built its "model".
model_loads = 0
_model: bytes | None = None


def model() -> bytes:
    global _model, model_loads
    if _model is None:
        model_loads += 1
        _model = b"weights"
    return _model


class StallParams(BaseJobParams):  # type: ignore[misc]  # untyped cl_ml_tools
    hold_s: float = Field(default=0.0, ge=0.0, description="seconds blocked in time.sleep")
    allocate_mb: int = Field(default=0, ge=0, description="MB allocated and touched")


class StallTask(ComputeModule):  # type: ignore[misc]
    @property
    def task_type(self) -> str:
        return TASK_TYPE

    def get_schema(self) -> type[BaseJobParams]:
        return StallParams

    async def execute(
        self, job: Job, params: BaseJobParams, progress_callback: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        assert isinstance(params, StallParams)
        if progress_callback is not None:
            progress_callback(1)
        model()
        if params.hold_s:
            # Blocks the event loop on purpose: cancelling the coroutine cannot stop it.
            time.sleep(params.hold_s)  # noqa: ASYNC251
        if params.allocate_mb:
            block = bytearray(params.allocate_mb * 1024 * 1024)
            del block
        return {"status": "ok", "task_output": {"pid": os.getpid(), "model_loads": model_loads}}
