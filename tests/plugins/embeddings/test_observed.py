"""The product's observation points (compute.observers), which the benchmark's probes use: each
plugin run and each first model load is observed, by job id and file name."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cl_ml_tools import Job

from compute import observers
from compute.plugins import models
from compute.plugins.models import MODELS
from compute.plugins.plugin_task import PluginTask, TaskParams
from compute_bench import onnx_models


class Echo(PluginTask):
    name = "echo"
    params = TaskParams

    async def run(self, files: Any, params: Any, progress: Any) -> dict[str, Any]:
        return {"inside": list(seen)}


seen: list[str] = []


@contextlib.contextmanager
def noted(key: str) -> Iterator[None]:
    seen.append(f"enter {key}")
    yield
    seen.append(f"exit {key}")


@pytest.fixture
def observing() -> Iterator[list[str]]:
    seen.clear()
    observers.plugin_runs.append(noted)
    observers.model_loads.append(noted)
    yield seen
    observers.plugin_runs.remove(noted)
    observers.model_loads.remove(noted)


async def test_a_plugin_run_is_observed_around_it(local_env: Path, observing: list[str]) -> None:
    job_id = str(uuid.uuid4())
    result = await Echo().execute(Job(job_id=job_id, task_type="echo", params={}), TaskParams())
    assert result == {"status": "ok", "task_output": {"inside": [f"enter {job_id}"]}}
    assert observing == [f"enter {job_id}", f"exit {job_id}"]


async def test_a_batch_is_observed_around_it_once_per_job(local_env: Path, observing: list[str]) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    jobs = [(Job(job_id=i, task_type="echo", params={}), TaskParams(), _no_progress) for i in ids]
    results = await Echo().execute_batch(jobs)
    inside = [f"enter {ids[0]}", f"enter {ids[1]}"]
    assert results == [{"status": "ok", "task_output": {"inside": inside}}] * 2
    assert observing == [*inside, f"exit {ids[1]}", f"exit {ids[0]}"]


def _no_progress(percentage: int) -> None:
    return None


def test_the_first_load_of_a_model_file_is_observed(local_env: Path, observing: list[str]) -> None:
    spec = MODELS["clip_embedding"]
    onnx_models.embedder(spec.path(), size=(64, 32), dim=8, grid=4)
    models.session(spec)
    models.session(spec)  # loaded once per process: the second is the cached session
    assert observing == [f"enter {spec.filename}", f"exit {spec.filename}"]
