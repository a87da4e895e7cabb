"""clip_embedding jobs through the service in batches (WORKER_BATCH, issue 19 item 2): queued jobs
go to the worker's plugin process in one call and through the stand-in model together; a photo
that does not decode fails its own job only; a batched job's vector is the one it gets alone."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compute.worker.plugin_process import PluginProcess
from compute_bench import onnx_models
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download

TASK = "clip_embedding"
OUTPUT = f"output/{TASK}.npy"


async def submit(server: Server, content: bytes) -> str:
    response = await server.client.post(
        f"/jobs/{TASK}", data={"priority": "5"}, files={"file": ("photo.jpg", content, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def vector(server: Server, job_id: str) -> np.ndarray[Any, Any]:
    found: np.ndarray[Any, Any] = np.load(io.BytesIO(await download(server, job_id, OUTPUT)))
    return found


async def test_queued_clip_jobs_run_as_one_batch_and_a_bad_photo_fails_alone(
    server: Server,
    start_worker: WorkerFactory,
    models_dir: Path,
    astronaut_jpeg: bytes,
    coffee_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    onnx_models.clip(models_dir, dynamic_batch=True)
    truncated = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    good = [await submit(server, astronaut_jpeg), await submit(server, coffee_jpeg)]
    bad = await submit(server, truncated)
    last = await submit(server, astronaut_jpeg)

    running = await start_worker(tasks=(TASK,), worker_batch={TASK: 8}, wait_idle=False)
    host = running.worker.lanes[0].slots[0].runner.host
    assert isinstance(host, PluginProcess)
    # Nothing has run yet (the worker's task has not had a turn): every call to the plugin
    # process from the first is seen.
    calls: list[list[str]] = []
    execute_batch = host.execute_batch

    async def recording(plugin: Any, jobs: Sequence[Any]) -> list[Any]:
        calls.append([job.job_id for job, _, _ in jobs])
        return await execute_batch(plugin, jobs)

    monkeypatch.setattr(host, "execute_batch", recording)

    for job_id in (*good, last):
        job = await server.wait_status(job_id, "completed", timeout=30)
        assert job["task_output"]["embedding_dim"] == 512
    failed = await server.wait_status(bad, "failed", timeout=30)
    assert "corrupt image" in failed["error_message"]
    assert calls == [[good[0], good[1], bad, last]]  # one call, the four together

    # The same photo alone, in a batch of one: the same vector as in the batch.
    alone = await submit(server, astronaut_jpeg)
    await server.wait_status(alone, "completed", timeout=30)
    assert calls[1:] == [[alone]]
    np.testing.assert_allclose(await vector(server, alone), await vector(server, good[0]), atol=1e-5)
    assert not np.allclose(await vector(server, good[1]), await vector(server, good[0]), atol=1e-3)
